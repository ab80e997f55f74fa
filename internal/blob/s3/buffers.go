package s3

import (
	"fmt"
)

// weight is what one of this write's buffers counts against the store's
// upload memory; never more than all of it, or it could never be had.
func (w *partWriter) weight() int64 { return min(int64(w.partSize), w.s.uploadMemSize) }

// buf is an empty buffer for the next part. A write gets its first buffer
// as soon as the store's upload memory has room for it (waiting otherwise),
// and more, up to Threads+1, only while there is room to spare; past that
// it waits for one of its own to come back from an upload. Every write
// holding memory has a buffer being filled or in flight, so waiting always
// ends.
func (w *partWriter) buf() ([]byte, error) {
	select {
	case b := <-w.bufs:
		return w.reuse(b)
	default:
	}
	switch {
	case w.have == 0:
		if err := w.s.uploadMem.Acquire(w.reqCtx, w.weight()); err != nil {
			return nil, fmt.Errorf("wait for upload memory: %w", err)
		}
	case w.have > int(w.s.cfg.Threads) || !w.s.uploadMem.TryAcquire(w.weight()):
		return w.reuse(<-w.bufs)
	}
	w.have++
	return w.s.partBuf(w.partSize), nil
}

// reuse readies a buffer that came back from an upload; nil stands for one
// dropped after a failed part, whose memory is still held.
func (w *partWriter) reuse(b []byte) ([]byte, error) {
	if err := w.err(); err != nil {
		w.bufs <- b
		return nil, err
	}
	if b == nil {
		return w.s.partBuf(w.partSize), nil
	}
	return b[:0], nil
}

// release hands the part buffers and the upload memory they held back to
// the store once no part upload runs.
func (w *partWriter) release() {
	w.s.putPartBuf(w.cur)
	w.cur = nil
	for done := false; !done; {
		select {
		case b := <-w.bufs:
			w.s.putPartBuf(b)
		default:
			done = true
		}
	}
	w.s.uploadMem.Release(int64(w.have) * w.weight())
	w.have = 0
}

// partBuf is an empty buffer of capacity size, recycled when size is the
// configured part size.
func (s *Store) partBuf(size int) []byte {
	if size == int(s.cfg.PartSize) {
		if b, ok := s.parts.Get().(*[]byte); ok {
			return (*b)[:0]
		}
	}
	return make([]byte, 0, size)
}

func (s *Store) putPartBuf(b []byte) {
	if cap(b) == int(s.cfg.PartSize) {
		s.parts.Put(&b)
	}
}
