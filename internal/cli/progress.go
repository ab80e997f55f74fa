package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress is the byte progress bar of one transfer (pull, commit, push)
// on stderr. It is the only way the commands draw one. newProgress gives
// nil, and every method of a nil *progress does nothing, unless stderr is
// a terminal and the output is not --json.
type progress struct {
	label string

	mu  sync.Mutex
	bar *progressbar.ProgressBar
}

func (g *globals) newProgress(label string) *progress {
	if g.json || !isTerminal(g.stderr) {
		return nil
	}
	return &progress{label: label}
}

// set moves the bar to done of total, drawing it first when it is not yet.
// It may be called from several goroutines: a transfer resent to another
// head may still report from the attempt before.
func (p *progress) set(done, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		p.bar = progressbar.DefaultBytes(total, p.label)
	}
	p.bar.Set64(done)
}

// callback is set as the Progress option of the cache and the workspace:
// nil when no bar is drawn.
func (p *progress) callback() func(done, total int64) {
	if p == nil {
		return nil
	}
	return p.set
}

// pushCallback is set as the Progress option of a push: the body sent of
// its length, with what the server reuses from the base in the label.
func (p *progress) pushCallback() func(sent, reused, total int64) {
	if p == nil {
		return nil
	}
	return func(sent, reused, total int64) {
		p.mu.Lock()
		if p.bar == nil && reused > 0 {
			p.label += fmt.Sprintf(" (delta: %s reused)", humanBytes(reused))
		}
		p.mu.Unlock()
		p.set(sent, total)
	}
}

// deltaCallback is set as the DeltaProgress option of the cache: the bar
// says how much of the transfer was reused and how much fetched.
func (p *progress) deltaCallback() func(reused, fetched, total int64) {
	if p == nil {
		return nil
	}
	return func(reused, fetched, total int64) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.bar == nil {
			p.bar = progressbar.DefaultBytes(total, p.label)
		}
		p.bar.Describe(fmt.Sprintf("%s (reused %s, fetched %s)", inert(p.label), humanBytes(reused), humanBytes(fetched)))
		p.bar.Set64(reused + fetched)
	}
}

// finish completes the bar, if one was drawn.
func (p *progress) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
	}
}

// file draws the bar at once and then shows the reads of f, of size bytes,
// on it. It keeps f's ReadAt and Seek: the client resends a push from the
// start to another head when the first one drops it, and then the bar
// starts over too.
func (p *progress) file(f *os.File, size int64) io.Reader {
	if p == nil {
		return f
	}
	p.set(0, size)
	return &progressFile{f: f, p: p, size: size}
}

type progressFile struct {
	f    *os.File
	p    *progress
	size int64
	done atomic.Int64
}

func (r *progressFile) Read(b []byte) (int, error) {
	n, err := r.f.Read(b)
	r.p.set(r.done.Add(int64(n)), r.size)
	return n, err
}

func (r *progressFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.f.ReadAt(b, off)
	r.done.Store(off + int64(n))
	r.p.set(off+int64(n), r.size)
	return n, err
}

func (r *progressFile) Seek(off int64, whence int) (int64, error) { return r.f.Seek(off, whence) }

// hashBar is the passing bar of a hash before a push (cleared when done),
// or nil when no bar is drawn.
func (g *globals) hashBar(size int64) *progressbar.ProgressBar {
	if g.json || !isTerminal(g.stderr) {
		return nil
	}
	return progressbar.NewOptions64(size, progressbar.OptionSetDescription("hash"), progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionShowBytes(true), progressbar.OptionClearOnFinish())
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
