package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Delta transfers (issue 14). A blob whose source serves its chunk index
// (source.Indexer: a depot server), or whose index the cache already has
// (a repair), is assembled from the chunks the cache already holds in
// other blobs (the seeds) plus byte ranges of the ordinary blob URL for the
// rest:
//
//  1. seedsFor picks the seeds, within a bounded lookup (see
//     DefaultSeedEntries), by priority: a quarantined copy of the wanted
//     blob itself (verify --repair), the previous content of the same
//     pointer, other content of the same image (UID or name), then every
//     other blob, most recently used first;
//  2. the wanted index is fetched and checked (DecodeVerified when the
//     revision recorded its digest; it must name the wanted blob and
//     size, with the cache's chunk parameters);
//  3. every chunk found in a seed is read from it and re-hashed (BLAKE3)
//     before it is written into the part file; a mismatch only moves the
//     chunk to a second fetch, after the first;
//  4. at the same time (fill), the rest is fetched as coalesced runs (at
//     most deltaRunMax each: compressed ranges from a source.Compressor,
//     else single-range requests) over Options.Connections connections, and every
//     chunk is hashed as it lands; a chunk that does not match its index
//     entry ends the delta (the index or the source lies) and the blob is
//     transferred whole instead;
//  5. the part file is hashed in order and committed exactly as a whole
//     transfer is: nothing is visible before the whole-file sha256 passes,
//     and a delta whose result does not verify falls back to a whole
//     transfer too. A lying index costs a fallback, never a wrong byte.
//
// Resume: the index followed is kept as ingest/<hex>.cix and the chunks in
// place as a bitmap in ingest/<hex>.json (saved every deltaSaveEvery bytes
// and when an attempt ends); a later attempt, or a later run after kill -9,
// re-hashes every claimed chunk before trusting it.

// DefaultSeedEntries bounds the seed lookup of one delta transfer: 4 Mi
// entries of chunks.SeedEntryBytes (24 bytes) is 96 MiB of memory, plus
// about 200 bytes per seed blob and at most maxSeedBlobs of those,
// whatever the size of the cache. At the default parameters (about 50 KiB
// a chunk) it covers about 190 GiB of seed content; beyond that the lowest-priority
// seeds are left out. Options.SeedEntries changes it.
const DefaultSeedEntries = 4 << 20

const (
	// maxSeedBlobs bounds the blobs one transfer considers (and holds
	// open) as seeds.
	maxSeedBlobs = 64
	// lazyIndexBlobs is how many seeds without an index (adopted, or
	// cached before indexes existed) one transfer indexes, reading them
	// whole: only the highest-priority ones of the same image.
	lazyIndexBlobs = 2
	// deltaRunMax is the longest byte range one request fetches.
	deltaRunMax = 16 << 20
	// The resume state is saved when deltaSaveEvery bytes were put in
	// place since the last save and deltaSaveGap has passed, or after
	// deltaSaveMax bytes whatever the time: a kill -9 loses at most that
	// much, and a fast transfer of a large blob writes its bitmap (one
	// bit per chunk) a few times a second at most.
	deltaSaveEvery = 4 << 20
	deltaSaveGap   = 200 * time.Millisecond
	deltaSaveMax   = 256 << 20
)

// Seed priority classes, high bits of a Seeds priority (the low bits are
// the blob's last use, in seconds).
const (
	classOther   = 1
	classSame    = 2 // the same image (UID or name)
	classPrev    = 3 // the previous content of the same pointer
	classRepair  = 4 // a quarantined copy of the wanted blob
	classShift   = 40
	lastUsedMask = 1<<classShift - 1
)

// errNoDelta says a delta transfer cannot (or can no longer) be made; the
// blob is transferred whole. It wraps the reason.
var errNoDelta = errors.New("whole transfer")

func noDelta(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errNoDelta)
}

// errNoSeed is errNoDelta when the cache holds nothing to reuse: nothing
// worth saying.
var errNoSeed = fmt.Errorf("no seed in the cache: %w", errNoDelta)

// errIndexKnown stops a partial's own indexer during a delta: the index
// is the one the delta followed.
var errIndexKnown = errors.New("index known")

// TransferStats are a cache's transfer counters since Open: the bytes
// fetched from sources (bodies, ranges and chunk indexes, as content), the
// bytes taken from seeds instead, and the bytes that crossed the network
// for what was fetched (less than Fetched when ranges came compressed).
type TransferStats struct {
	Fetched  int64 `json:"bytes_fetched"`
	Reused   int64 `json:"bytes_reused"`
	Received int64 `json:"bytes_received"`
}

// TransferStats returns the counters of every transfer made through c.
func (c *Cache) TransferStats() TransferStats {
	return TransferStats{Fetched: c.stats.fetched.Load(), Reused: c.stats.reused.Load(), Received: c.stats.received.Load()}
}

// xferStats counts bytes over the attempts of one fetch.
type xferStats struct {
	fetched, reused, received atomic.Int64
	delta                     atomic.Bool
	note                      atomic.Pointer[string]
	// index is the source's chunk index a whole transfer took
	// (sourceIndex), kept for the next attempt; noIndex says the source's
	// index was refused, or a delta found it lying: the attempts left
	// cut their own.
	index   atomic.Pointer[chunks.Index]
	noIndex atomic.Bool
}

// addFetched counts n bytes fetched as they are (received as sent).
func (c *Cache) addFetched(x *xferStats, n int64) {
	c.addContent(x, n)
	c.addReceived(x, n)
}

// addContent counts n bytes of content fetched; addReceived the bytes that
// crossed the network for it (a compressed range: fewer).
func (c *Cache) addContent(x *xferStats, n int64) {
	x.fetched.Add(n)
	c.stats.fetched.Add(n)
}

func (c *Cache) addReceived(x *xferStats, n int64) {
	x.received.Add(n)
	c.stats.received.Add(n)
}

func (c *Cache) addReused(x *xferStats, n int64) {
	x.reused.Add(n)
	c.stats.reused.Add(n)
}

// seedBlob is a candidate seed.
type seedBlob struct {
	d    digest.Digest
	path string
	prio int64
	x    *chunks.Index // known index (the wanted blob's own, for a quarantined copy)
}

// seedHints say which cached blobs are closest to the wanted one.
type seedHints struct {
	want digest.Digest
	key  string // the pointer key of the reference (unpinned)
	uid  string // the image UID the reference resolved to, if any
}

func (c *Cache) hintsFor(r ref.Ref, want source.Descriptor) seedHints {
	u := r
	u.Digest = ""
	return seedHints{want: want.Digest, key: u.Key(c.server()), uid: want.Identity}
}

func priority(class int64, rec BlobRecord) int64 {
	t := rec.LastUsed.Unix()
	if t < 0 {
		t = 0
	}
	return class<<classShift | t&lastUsedMask
}

// seedCandidates lists the seeds for h, highest priority first, at most
// maxSeedBlobs.
func (c *Cache) seedCandidates(h seedHints) ([]seedBlob, error) {
	recs, err := c.records()
	if err != nil {
		return nil, err
	}
	ptrs, _ := c.pointers()
	class := map[digest.Digest]int64{}
	up := func(d digest.Digest, k int64) {
		if class[d] < k {
			class[d] = k
		}
	}
	for _, p := range ptrs {
		switch {
		case p.Key == h.key:
			up(p.Digest, classPrev)
		case h.uid != "" && p.UID == h.uid:
			up(p.Digest, classSame)
		}
	}
	var out []seedBlob
	for _, rec := range recs {
		if rec.Digest == h.want {
			if rec.Quarantined != "" {
				if x, ok := c.chunkIndex(h.want); ok {
					out = append(out, seedBlob{d: h.want, path: rec.Quarantined, prio: priority(classRepair, rec), x: x})
				}
			}
			continue
		}
		if rec.Quarantined != "" {
			continue
		}
		k := max(class[rec.Digest], classOther)
		if k < classSame && rec.Ref != "" {
			if rr, err := ref.Parse(rec.Ref); err == nil {
				rr.Digest = ""
				if rr.Key(c.server()) == h.key {
					k = classSame
				}
			}
		}
		out = append(out, seedBlob{d: rec.Digest, path: c.BlobPath(rec.Digest), prio: priority(k, rec)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].prio > out[j].prio })
	if len(out) > maxSeedBlobs {
		out = out[:maxSeedBlobs]
	}
	return out, nil
}

// seedsFor builds the bounded seed lookup for h and the file of each seed,
// and returns the index of the highest-priority seed (the base an index
// delta is asked against), nil when there is none.
func (c *Cache) seedsFor(ctx context.Context, h seedHints) (*chunks.Seeds, map[digest.Digest]string, *chunks.Index, error) {
	cands, err := c.seedCandidates(h)
	if err != nil {
		return nil, nil, nil, err
	}
	limit := c.opts.SeedEntries
	if limit <= 0 {
		limit = DefaultSeedEntries
	}
	seeds, err := chunks.NewSeeds(chunks.DefaultParams, limit)
	if err != nil {
		return nil, nil, nil, err
	}
	paths := map[digest.Digest]string{}
	var first *chunks.Index
	lazy := lazyIndexBlobs
	for _, s := range cands {
		if ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		if seeds.Len() >= limit {
			break // a lower priority would only be dropped again
		}
		x := s.x
		if x == nil {
			var ok bool
			x, ok = c.chunkIndex(s.d)
			if !ok && lazy > 0 && s.prio>>classShift >= classSame {
				lazy--
				x, err = c.buildChunkIndex(ctx, s.d, s.path)
				if err != nil {
					c.log.Debug("seed not indexed", "digest", s.d, "err", err)
					continue
				}
			}
		}
		if x == nil || x.Params != chunks.DefaultParams {
			continue
		}
		if err := seeds.Add(x, s.prio); err != nil {
			continue
		}
		paths[s.d] = s.path
		if first == nil && s.d != h.want {
			first = x
		}
	}
	return seeds, paths, first, nil
}

// wantedIndex returns the index of want.Digest: the cache's own (a blob it
// had and lost) or the source's, checked against what the transfer
// expects. Any failure is errNoDelta, except the caller giving up.
//
// With a base (the index of the highest-priority seed) and a source that
// can (source.DeltaIndexer), the index is asked for as a delta against the
// base's (a few KB where the plain index is hundreds); any failure of that
// costs the plain request.
func (c *Cache) wantedIndex(ctx context.Context, src source.Source, want source.Descriptor, base *chunks.Index) (x *chunks.Index, enc []byte, fetched int64, err error) {
	d := want.Digest
	plain := false // the plain index was fetched: count its bytes
	x, ok := c.chunkIndex(d)
	if !ok || (want.Chunks != "" && !indexDigestIs(x, want.Chunks)) {
		ix, isIx := src.(source.Indexer)
		if !isIx {
			return nil, nil, 0, noDelta("%s serves no chunk index", src)
		}
		x = nil
		if di, isDi := src.(source.DeltaIndexer); isDi && base != nil {
			var wire int64
			x, wire, err = di.ChunkIndexDelta(ctx, d, want.Chunks, want.Size, base)
			fetched += wire
			if ctx.Err() != nil {
				return nil, nil, fetched, ctx.Err()
			}
			if err != nil {
				c.log.Debug("chunk index delta refused; fetching the plain index", "digest", d, "base", base.Blob, "err", err)
				x = nil
			}
		}
		if x == nil {
			plain = true
			x, err = ix.ChunkIndex(ctx, d, want.Chunks, want.Size)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, 0, ctx.Err()
			}
			if errors.Is(err, errdefs.ErrNotFound) {
				return nil, nil, 0, noDelta("%s has no chunk index for %s (an older server?)", src, d)
			}
			return nil, nil, 0, noDelta("chunk index refused: %v", err)
		}
		ok = false
	}
	enc, err = x.Encode()
	if err != nil {
		return nil, nil, 0, noDelta("chunk index refused: %v", err)
	}
	if plain {
		fetched += int64(len(enc))
	}
	switch {
	case x.Blob != d:
		return nil, nil, fetched, noDelta("chunk index names %s, not %s", x.Blob, d)
	case want.Size >= 0 && x.Size != want.Size:
		return nil, nil, fetched, noDelta("chunk index of %s says %d bytes, the source %d", d, x.Size, want.Size)
	case x.Params != chunks.DefaultParams:
		return nil, nil, fetched, noDelta("chunk index of %s uses other chunk parameters (%+v)", d, x.Params)
	}
	return x, enc, fetched, nil
}

func indexDigestIs(x *chunks.Index, want digest.Digest) bool {
	b, err := x.Encode()
	return err == nil && chunks.DigestOf(b) == want
}

// canDelta reports whether a transfer of want from src may be a delta, and
// if not, why (empty: nothing worth saying).
func (c *Cache) canDelta(src source.Source, want source.Descriptor, o EnsureOptions) (bool, string) {
	if o.NoDelta {
		return false, ""
	}
	if _, ok := src.(source.Indexer); ok {
		return true, ""
	}
	if _, err := os.Stat(c.chunkIndexPath(want.Digest)); err == nil {
		return true, "" // a blob the cache had: its index names its chunks
	}
	return false, src.String() + " serves no chunk index; transferring whole"
}

// delta makes one delta attempt for want from src (see the top of this
// file). errNoDelta means: transfer it whole instead; the partial is then
// empty.
func (c *Cache) delta(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions, xs *xferStats) (Image, error) {
	d := want.Digest
	p, err := c.openDeltaPartial(d, r.String(), src.String())
	if err != nil {
		return Image{}, err
	}
	defer p.close()
	seeds, paths, base, err := c.seedsFor(ctx, c.hintsFor(r, want))
	if err != nil {
		return Image{}, err
	}
	x, enc := p.resumeIndex(want)
	resumed := x != nil
	if !resumed {
		if seeds.Len() == 0 {
			return Image{}, errNoSeed
		}
		var n int64
		x, enc, n, err = c.wantedIndex(ctx, src, want, base)
		c.addFetched(xs, n)
		if err != nil {
			if errors.Is(err, errNoDelta) {
				xs.noIndex.Store(true) // the whole transfer need not ask again
			}
			return Image{}, err
		}
	}
	dl := &deltaRun{c: c, p: p, x: x, src: src, o: o, xs: xs, total: x.Size}
	dl.landedCond = sync.NewCond(&dl.mu)
	dl.ext = make([]chunks.Extent, 0, len(x.Chunks))
	for e := range x.Extents() {
		dl.ext = append(dl.ext, e)
	}
	if resumed {
		dl.done = p.st.Done
	} else {
		dl.done = make([]byte, (len(x.Chunks)+7)/8)
		prefix := p.st.Prefix // what a whole transfer left in order
		if prefix < 0 {
			if fi, err := p.f.Stat(); err == nil {
				prefix = fi.Size()
			}
		}
		for i, e := range dl.ext {
			if e.Offset+int64(e.Length) <= prefix {
				dl.set(i)
			}
		}
		if err := writeIndexFile(p.indexPath(), enc); err != nil {
			return Image{}, c.diskErr(err)
		}
		p.st.Chunks = chunks.DigestOf(enc)
	}
	if len(dl.done) != (len(x.Chunks)+7)/8 {
		dl.done = make([]byte, (len(x.Chunks)+7)/8)
	}
	p.st.Prefix, p.st.Done = 0, dl.done
	if err := dl.save(); err != nil {
		return Image{}, err
	}
	xs.delta.Store(true)
	// What is claimed is re-hashed before it counts.
	buf := make([]byte, x.Params.Max)
	for i, e := range dl.ext {
		if dl.isSet(i) && !dl.check(e, p.f, e.Offset, buf) {
			dl.clear(i)
		}
	}
	p.done = dl.bytesSet()
	err = c.claim(p, src, x.Size)
	p.done = 0
	if err != nil {
		return Image{}, err
	}
	if err := p.f.Truncate(x.Size); err != nil {
		return Image{}, c.diskErr(err)
	}
	if n := dl.bytesSet(); n > 0 {
		c.addReused(xs, n)
		dl.moved.Add(n)
	}
	// The whole-file check, exactly as a whole transfer ends, hashed in
	// order as the chunks land.
	err, herr := dl.fillHashing(ctx, seeds, paths, buf)
	if err != nil {
		return Image{}, dl.end(err)
	}
	if err := dl.save(); err != nil {
		return Image{}, err
	}
	if n := dl.bytesSet(); n != x.Size {
		return Image{}, fmt.Errorf("delta transfer of %s ended with %d of %d bytes in place (it resumes next time): %w", d, n, x.Size, errdefs.ErrUnavailable)
	}
	if herr != nil {
		return Image{}, herr
	}
	if got := p.h.Digest(); got != d {
		p.discard()
		xs.noIndex.Store(true)
		return Image{}, noDelta("the chunks of %s's index assembled into %s", d, got)
	}
	img, err := p.commit(src)
	if err != nil {
		return Image{}, err
	}
	c.storeChunkIndex(x)
	return img, nil
}

// deltaRun is one delta attempt in progress.
type deltaRun struct {
	c     *Cache
	p     *partial
	x     *chunks.Index
	ext   []chunks.Extent
	src   source.Source
	o     EnsureOptions
	xs    *xferStats
	total int64

	mu      sync.Mutex // done, and the state file
	done    []byte
	saved   time.Time
	moved   atomic.Int64 // bytes in place: progress
	unsaved atomic.Int64
	plain   atomic.Bool // compressed ranges failed: plain ones only

	// hashInOrder waits on landedCond (on mu) for the next chunk; stopped
	// says no more will land.
	landedCond *sync.Cond
	stopped    bool
	abort      atomic.Bool // the transfer failed: stop hashing at once
	progressMu sync.Mutex  // one progress callback at a time
}

// errIncomplete ends hashInOrder when the transfer stopped short.
var errIncomplete = errors.New("not every chunk in place")

// hashInOrder hashes the part file from its start as chunks land, from
// fresh hashes (sha256, BLAKE3 and the format sniff), so that the
// whole-file check runs beside the transfer instead of after it. It reads
// back what landed (from the page cache) and returns
// once every chunk is hashed, or errIncomplete when stopHashing was called
// with a chunk still missing.
func (dl *deltaRun) hashInOrder() error {
	p := dl.p
	p.h.Close()
	p.resetHashes()
	p.index.err = errIndexKnown
	buf := make([]byte, 1<<20)
	for next := 0; next < len(dl.ext); {
		dl.mu.Lock()
		for !dl.isSet(next) && !dl.stopped {
			dl.landedCond.Wait()
		}
		if !dl.isSet(next) {
			dl.mu.Unlock()
			return errIncomplete
		}
		end := next + 1
		for end < len(dl.ext) && dl.isSet(end) {
			end++
		}
		dl.mu.Unlock()
		off, stop := dl.ext[next].Offset, dl.ext[end-1].Offset+int64(dl.ext[end-1].Length)
		for off < stop {
			if dl.abort.Load() {
				return errIncomplete
			}
			n := min(int64(len(buf)), stop-off)
			if _, err := p.f.ReadAt(buf[:n], off); err != nil {
				return dl.c.diskErr(err)
			}
			p.hash(buf[:n])
			off += n
		}
		next = end
	}
	return nil
}

// stopHashing tells hashInOrder that no more chunks will land; with
// abort, that its hash is not wanted either (it returns at its next read).
func (dl *deltaRun) stopHashing(abort bool) {
	if abort {
		dl.abort.Store(true)
	}
	dl.mu.Lock()
	dl.stopped = true
	dl.mu.Unlock()
	dl.landedCond.Broadcast()
}

// fillHashing runs fill with hashInOrder beside it and joins both, however
// fill ends: err is fill's, herr the hasher's.
func (dl *deltaRun) fillHashing(ctx context.Context, seeds *chunks.Seeds, paths map[digest.Digest]string, buf []byte) (err, herr error) {
	var hg errgroup.Group
	hg.Go(dl.hashInOrder)
	defer func() {
		dl.stopHashing(err != nil)
		if werr := hg.Wait(); herr == nil {
			herr = werr
		}
	}()
	return dl.fill(ctx, seeds, paths, buf), nil
}

func (dl *deltaRun) isSet(i int) bool { return dl.done[i/8]&(1<<(i%8)) != 0 }
func (dl *deltaRun) set(i int)        { dl.done[i/8] |= 1 << (i % 8) }
func (dl *deltaRun) clear(i int)      { dl.done[i/8] &^= 1 << (i % 8) }

func (dl *deltaRun) bytesSet() int64 {
	var n int64
	for i, e := range dl.ext {
		if dl.isSet(i) {
			n += int64(e.Length)
		}
	}
	return n
}

// save writes the resume state: the index digest and the chunks in place.
func (dl *deltaRun) save() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	dl.unsaved.Store(0)
	dl.saved = time.Now()
	dl.p.st.Done = dl.done
	if err := writeJSON(dl.p.statePath, dl.p.st, false); err != nil {
		return dl.c.diskErr(err)
	}
	return nil
}

// How a chunk came to be in place.
const (
	fromSeed       = iota
	fromRange      // a plain range: received as it is
	fromCompressed // a compressed range: the caller counts what was received
)

// landed marks chunk i in place and reports progress, saving the state
// every deltaSaveEvery bytes.
func (dl *deltaRun) landed(i int, how int) error {
	n := int64(dl.ext[i].Length)
	dl.mu.Lock()
	dl.set(i)
	dl.mu.Unlock()
	dl.landedCond.Broadcast()
	switch how {
	case fromSeed:
		dl.c.addReused(dl.xs, n)
	case fromRange:
		dl.c.addFetched(dl.xs, n)
	default:
		dl.c.addContent(dl.xs, n)
	}
	moved := dl.moved.Add(n)
	if dl.o.Progress != nil || dl.o.DeltaProgress != nil {
		// Seed copies and fetches land at once; the callbacks are called
		// one at a time.
		dl.progressMu.Lock()
		if dl.o.Progress != nil {
			dl.o.Progress(moved, dl.total)
		}
		if dl.o.DeltaProgress != nil {
			dl.o.DeltaProgress(dl.xs.reused.Load(), dl.xs.fetched.Load(), dl.total)
		}
		dl.progressMu.Unlock()
	}
	if u := dl.unsaved.Add(n); u >= deltaSaveMax || (u >= deltaSaveEvery && dl.sinceSave() >= deltaSaveGap) {
		return dl.save()
	}
	return nil
}

func (dl *deltaRun) sinceSave() time.Duration {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return time.Since(dl.saved)
}

// end saves what is in place when an attempt stops, and empties the
// partial when the delta is abandoned (errNoDelta).
func (dl *deltaRun) end(err error) error {
	if errors.Is(err, errNoDelta) {
		dl.p.discard()
		return err
	}
	if serr := dl.save(); serr != nil {
		dl.c.log.Warn("delta state not saved", "digest", dl.p.d, "err", serr)
	}
	return err
}

// check reads e's bytes at off of f and reports whether they hash to e.
// buf holds at least e.Length bytes; on success buf[:e.Length] holds them.
func (dl *deltaRun) check(e chunks.Extent, f *os.File, off int64, buf []byte) bool {
	b := buf[:e.Length]
	if _, err := f.ReadAt(b, off); err != nil {
		return false
	}
	return chunks.HashOf(b) == e.Hash
}

// fromSeeds copies every chunk a seed has, re-hashed.
func (dl *deltaRun) fromSeeds(ctx context.Context, plan []seedCopy, paths map[digest.Digest]string, buf []byte) error {
	files := map[digest.Digest]*os.File{}
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	bad := 0
	for _, sc := range plan {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := dl.ext[sc.i]
		f, opened := files[sc.loc.Blob]
		if !opened {
			f, _ = os.Open(paths[sc.loc.Blob]) // gone since: fetched instead
			files[sc.loc.Blob] = f
		}
		if f == nil || !dl.check(e, f, sc.loc.Offset, buf) {
			bad++
			continue
		}
		if _, err := dl.p.f.WriteAt(buf[:e.Length], e.Offset); err != nil {
			return dl.c.diskErr(err)
		}
		if err := dl.landed(sc.i, fromSeed); err != nil {
			return err
		}
	}
	if bad > 0 {
		dl.c.log.Warn("seed chunks failed their re-hash; fetching them instead", "digest", dl.p.d, "chunks", bad)
	}
	return nil
}

// seedCopy is a chunk to take from a seed: chunk i of the wanted index,
// found at loc.
type seedCopy struct {
	i   int
	loc chunks.Location
}

// planSeeds looks up every chunk not in place in seeds: those found are
// to be copied (plan), the others fetched (runs).
func (dl *deltaRun) planSeeds(seeds *chunks.Seeds) (plan []seedCopy, runs []fetchRange) {
	planned := make([]bool, len(dl.ext))
	for i, e := range dl.ext {
		if dl.isSet(i) {
			continue
		}
		if loc, ok := seeds.Lookup(e.Chunk); ok {
			plan = append(plan, seedCopy{i, loc})
			planned[i] = true
		}
	}
	return plan, dl.runs(planned)
}

// fill puts every chunk in place: the seed copies and the fetches at once
// (they write disjoint chunks, and one is local work while the other waits
// on the network), then a second fetch of any seed chunk that failed its
// re-hash.
func (dl *deltaRun) fill(ctx context.Context, seeds *chunks.Seeds, paths map[digest.Digest]string, buf []byte) error {
	plan, runs := dl.planSeeds(seeds)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dl.fromSeeds(gctx, plan, paths, buf) })
	g.Go(func() error { return dl.fetch(gctx, runs) })
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return dl.fetch(ctx, dl.runs(nil))
}

// fetch fetches every chunk not in place as coalesced byte ranges over the
// cache's connections, verifying each chunk as it lands.
// fetchRange is a run of chunks to fetch with one request: chunk indexes
// [first, end).
type fetchRange struct{ first, end int }

// runs coalesces the chunks not in place, and not skipped, into runs of at
// most deltaRunMax bytes. It reads the bitmap: call it while nothing else
// sets chunks.
func (dl *deltaRun) runs(skip []bool) []fetchRange {
	var runs []fetchRange
	var cur *fetchRange
	var curLen int64
	for i, e := range dl.ext {
		if dl.isSet(i) || (skip != nil && skip[i]) {
			cur = nil
			continue
		}
		if cur == nil || curLen+int64(e.Length) > deltaRunMax {
			runs = append(runs, fetchRange{i, i})
			cur, curLen = &runs[len(runs)-1], 0
		}
		cur.end = i + 1
		curLen += int64(e.Length)
	}
	return runs
}

// fetch fetches runs over the cache's connections, verifying each chunk as
// it lands.
func (dl *deltaRun) fetch(ctx context.Context, runs []fetchRange) error {
	if len(runs) == 0 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(dl.c.opts.Connections, 1))
	for _, rn := range runs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return dl.fetchRun(gctx, rn.first, rn.end) })
	}
	if err := g.Wait(); err != nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return ctx.Err() // not "ended short": the caller gave up
		}
		return err
	}
	return nil
}

// fetchRun fetches chunks [first, end) with one range request: compressed
// when the source can (source.Compressor), else plain.
func (dl *deltaRun) fetchRun(ctx context.Context, first, end int) error {
	if cs, ok := dl.src.(source.Compressor); ok && !dl.plain.Load() {
		next, err := dl.fetchCompressed(ctx, cs, first, end)
		switch {
		case errors.Is(err, errPlain):
			if dl.plain.CompareAndSwap(false, true) {
				dl.c.log.Info("fetching plain ranges", "digest", dl.p.d, "source", dl.src.String(), "why", err)
			}
		case errors.Is(err, errPlainOnce):
			dl.c.log.Debug("fetching a plain range", "digest", dl.p.d, "source", dl.src.String(), "why", err)
		default:
			return err
		}
		if first = next; first >= end {
			return nil
		}
	}
	off := dl.ext[first].Offset
	last := dl.ext[end-1]
	n := last.Offset + int64(last.Length) - off
	d, src := dl.p.d, dl.src
	body, err := src.Open(ctx, d, off, n, "")
	if err != nil {
		return err
	}
	defer body.Close()
	if body.Offset != off {
		return noDelta("%s ignored a range request", src)
	}
	if body.Size >= 0 && body.Size != dl.total {
		dl.xs.noIndex.Store(true)
		return noDelta("%s says %s has %d bytes, its index %d", src, d, body.Size, dl.total)
	}
	_, err = dl.takeChunks(ctx, body, first, end, fromRange, nil)
	return err
}

// takeChunks reads chunks [first, end) from body in order, hashing each
// against its index entry before it is written and marked in place; after,
// when not nil, runs once per chunk that landed. It returns the first chunk
// not in place. A body that breaks off is ErrUnavailable (the transfer
// resumes); one that says its bytes are corrupt (a compressed frame that
// does not decode) is errPlain; a chunk that does not match its entry ends
// the delta.
func (dl *deltaRun) takeChunks(ctx context.Context, body io.Reader, first, end, how int, after func()) (int, error) {
	d, src := dl.p.d, dl.src
	buf := make([]byte, dl.x.Params.Max)
	for i := first; i < end; i++ {
		e := dl.ext[i]
		b := buf[:e.Length]
		if _, err := io.ReadFull(body, b); err != nil {
			switch {
			case ctx.Err() != nil:
				return i, ctx.Err()
			case errors.Is(err, errdefs.ErrCorrupt):
				return i, fmt.Errorf("%v: %w", err, errPlain)
			case errors.Is(err, errdefs.ErrUnavailable):
				return i, fmt.Errorf("delta transfer of %s from %s interrupted at %d (it resumes next time): %w", d, src, e.Offset, err)
			}
			return i, fmt.Errorf("delta transfer of %s from %s interrupted at %d (it resumes next time): %v: %w", d, src, e.Offset, err, errdefs.ErrUnavailable)
		}
		if chunks.HashOf(b) != e.Hash {
			dl.xs.noIndex.Store(true)
			return i, noDelta("chunk at %d of %s from %s does not match its index entry", e.Offset, d, src)
		}
		if _, err := dl.p.f.WriteAt(b, e.Offset); err != nil {
			return i, dl.c.diskErr(err)
		}
		if after != nil {
			after()
		}
		if err := dl.landed(i, how); err != nil {
			return i + 1, err
		}
	}
	return end, nil
}

// errPlain says compressed ranges are not to be had from this source (it
// has none, or sent a frame that does not decode): plain ranges instead.
// errPlainOnce says this one was not to be had (the head is busy, a proxy
// refused it, …): a plain range for this run, compressed ones after.
var (
	errPlain     = errors.New("no compressed ranges")
	errPlainOnce = errors.New("no compressed range")
)

// fetchCompressed fetches chunks [first, end) as one compressed range,
// verifying each as it lands. On errPlain, next is the first chunk not in
// place, for a plain range to go on from.
func (dl *deltaRun) fetchCompressed(ctx context.Context, cs source.Compressor, first, end int) (next int, err error) {
	off := dl.ext[first].Offset
	last := dl.ext[end-1]
	n := last.Offset + int64(last.Length) - off
	d, src := dl.p.d, dl.src
	body, err := cs.OpenCompressed(ctx, d, off, n)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return first, ctx.Err()
		case errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrCorrupt):
			return first, fmt.Errorf("%v: %w", err, errPlain)
		}
		// Busy (503), stalled, refused by a proxy, or a range the source
		// says is not there: the plain range answers for itself (and checks
		// the size the index claims).
		return first, fmt.Errorf("%v: %w", err, errPlainOnce)
	}
	defer body.Close()
	var counted int64
	defer func() { dl.c.addReceived(dl.xs, body.WireBytes()-counted) }()
	next, err = dl.takeChunks(ctx, body, first, end, fromCompressed, func() {
		w := body.WireBytes()
		dl.c.addReceived(dl.xs, w-counted)
		counted = w
	})
	if err != nil {
		return next, err
	}
	// The frame must end where the range does. Every chunk is in place and
	// verified already; a source that sends more is not asked again.
	var one [1]byte
	if _, err := body.Read(one[:]); err == nil || errors.Is(err, errdefs.ErrCorrupt) {
		if dl.plain.CompareAndSwap(false, true) {
			dl.c.log.Info("fetching plain ranges", "digest", d, "source", src.String(), "why", fmt.Sprintf("compressed range %d+%d runs on", off, n))
		}
	}
	return end, ctx.Err()
}

// openDeltaPartial opens d's part file as it is, for a delta transfer:
// unlike openPartial nothing is truncated or hashed yet.
func (c *Cache) openDeltaPartial(d digest.Digest, refStr, origin string) (*partial, error) {
	p := &partial{c: c, d: d, ref: refStr, path: filepath.Join(c.dir, "ingest", d.Encoded()+".part"),
		statePath: filepath.Join(c.dir, "ingest", d.Encoded()+".json")}
	st, ok, _ := readJSON[ingestState](p.statePath)
	if !ok {
		st = ingestState{Prefix: 0}
	}
	st.Source, st.Validator = origin, ""
	p.st = st
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, c.diskErr(err)
	}
	p.f = f
	p.resetHashes()
	p.index.err = errIndexKnown
	return p, nil
}

// resumeIndex returns the index an earlier delta attempt followed, when
// the state names it and it still fits want.
func (p *partial) resumeIndex(want source.Descriptor) (*chunks.Index, []byte) {
	if p.st.Chunks == "" {
		return nil, nil
	}
	enc, err := os.ReadFile(p.indexPath())
	if err != nil || len(enc) > chunks.MaxEncodedSize {
		return nil, nil
	}
	x, err := chunks.DecodeVerified(enc, p.st.Chunks)
	if err != nil || x.Blob != p.d || (want.Size >= 0 && x.Size != want.Size) ||
		(want.Chunks != "" && want.Chunks != p.st.Chunks) || x.Params != chunks.DefaultParams {
		p.st.Chunks, p.st.Done, p.st.Prefix = "", nil, 0
		return nil, nil
	}
	return x, enc
}

func writeIndexFile(path string, enc []byte) error {
	return atomicfile.Write(path, enc, 0o644, false)
}

// PullPlan is what a pull would move, as PlanPull estimates it.
type PullPlan struct {
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	// Present: the content is cached and valid; a pull moves nothing.
	Present bool `json:"present"`
	// Transfer is "delta" or "whole" (empty when Present).
	Transfer string `json:"transfer,omitempty"`
	// BytesFetched is what would come from the source (ranges and the
	// chunk index), BytesReused what would be taken from Seeds cached
	// blobs. A seed chunk that fails its re-hash during the real pull is
	// fetched instead.
	BytesFetched int64  `json:"bytes_fetched"`
	BytesReused  int64  `json:"bytes_reused"`
	Seeds        int    `json:"seeds"`
	Note         string `json:"note,omitempty"`
}

// PlanPull resolves refStr and reports what a pull of it would fetch and
// reuse, without fetching its body: it reads the chunk index (the one
// request beyond the resolve) and looks every chunk up in the seeds.
func (c *Cache) PlanPull(ctx context.Context, refStr string, o EnsureOptions) (PullPlan, error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return PullPlan{}, err
	}
	src, err := c.sourceFor(r, o)
	if err != nil {
		return PullPlan{}, err
	}
	desc := source.Descriptor{Digest: r.Digest, Size: -1}
	if r.Kind == ref.HTTP && o.Checksum != "" {
		desc.Digest = o.Checksum
	}
	if desc.Digest == "" || r.Kind == ref.OCI {
		if desc, err = src.Resolve(ctx); err != nil {
			return PullPlan{}, err
		}
	}
	plan := PullPlan{Ref: refStr, Digest: desc.Digest, Size: desc.Size}
	if !o.Force {
		img, ok, err := c.localLocked(ctx, desc.Digest)
		if err != nil {
			return PullPlan{}, err
		}
		if ok {
			plan.Present, plan.Size = true, img.Size
			return plan, nil
		}
	}
	whole := func(note string) (PullPlan, error) {
		plan.Transfer, plan.BytesFetched, plan.BytesReused, plan.Note = "whole", max(plan.Size, 0), 0, note
		return plan, nil
	}
	ok, why := c.canDelta(src, desc, o)
	if !ok {
		return whole(why)
	}
	seeds, _, base, err := c.seedsFor(ctx, c.hintsFor(r, desc))
	if err != nil {
		return PullPlan{}, err
	}
	if seeds.Len() == 0 {
		return whole("")
	}
	x, _, n, err := c.wantedIndex(ctx, src, desc, base)
	if err != nil {
		if errors.Is(err, errNoDelta) {
			return whole(strings.TrimSuffix(err.Error(), ": "+errNoDelta.Error()) + "; transferring whole")
		}
		return PullPlan{}, err
	}
	plan.Transfer, plan.Size, plan.BytesFetched = "delta", x.Size, n
	used := map[digest.Digest]bool{}
	for e := range x.Extents() {
		if loc, ok := seeds.Lookup(e.Chunk); ok {
			plan.BytesReused += int64(e.Length)
			used[loc.Blob] = true
		} else {
			plan.BytesFetched += int64(e.Length)
		}
	}
	plan.Seeds = len(used)
	return plan, nil
}
