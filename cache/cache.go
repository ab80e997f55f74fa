// Package cache is depot's node-side image cache, whose identity is the
// content digest.
//
// Ensure(ctx, ref, opts) returns a local, read-only file that is exactly the
// content asked for, or a typed error (errdefs) naming what was wanted and
// what is available. Pointers (names, UIDs, URLs, tags) are only ever used
// to learn a digest; a pointer lookup never stands in for a content check.
//
// Layout under the cache directory:
//
//	blobs/sha256/<hex>        committed, read-only, verified blobs
//	ingest/<hex>.part         resumable partial download of <hex>
//	ingest/<hex>.json         its source validator (ETag)
//	locks/<hex>.lock          flock per digest: its transfer, deletion and record updates
//	leases/<h>.json           who uses which digest (lease.go); unreadable: nothing is deleted
//	index/pointers/<h>.json   pointer key → digest, resolved_at (h = sha256(key))
//	index/blobs/<hex>.json    size, BLAKE3, format, verified_at, last_used, stat fingerprint
//	quarantine/<hex>.<time>   a blob that failed verification, kept for forensics
//	work/<uid>/               edit workspaces (package workspace)
//
// Many processes share one cache: index files are replaced by atomic rename,
// blobs appear only by rename after verification, and a per-digest flock
// makes concurrent callers wait for one transfer instead of repeating it.
// The same lock covers every deletion of the digest and every rewrite of
// its record (locks.go), so a lookup never returns a path being deleted.
// The cache never modifies a committed blob.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Policy says when a mutable reference is re-resolved (Kubernetes semantics).
type Policy string

// Pull policies. A pinned digest makes the policy moot.
const (
	Always       Policy = "Always"       // resolve (one small request); fetch only if the digest changed
	IfNotPresent Policy = "IfNotPresent" // use any valid local copy
	Never        Policy = "Never"        // local only
)

// ParsePolicy accepts the policy names case-insensitively.
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{Always, IfNotPresent, Never} {
		if strings.EqualFold(string(p), s) {
			return p, nil
		}
	}
	return "", fmt.Errorf("pull policy %q: want Always, IfNotPresent or Never: %w", s, errdefs.ErrInvalidArgument)
}

// Options configure a Cache.
type Options struct {
	Logger *slog.Logger
	// Depot is the client used for depot references (name, UID). Nil means
	// depot references fail with ErrInvalidArgument.
	Depot *client.Client
	// HTTPClient fetches URL and OCI sources; nil is a client with
	// depot's default timeouts and redirect policy (client.NewHTTPClient).
	HTTPClient *http.Client
	// MaxDownloadSize, when > 0, bounds what one download may claim: a
	// source declaring more fails with ErrTooLarge before any body byte is
	// requested. Every download is also bounded by the free space of the
	// cache (ErrNoSpace).
	MaxDownloadSize int64
	// Connections is how many parallel ranged requests fetch one large blob
	// (default 1: a single stream).
	Connections int
	// Sources overrides source construction (tests, embedding programs).
	Sources func(r ref.Ref, o EnsureOptions) (source.Source, error)
}

// EnsureOptions tune one Ensure call.
type EnsureOptions struct {
	Policy Policy // default IfNotPresent
	// Force re-resolves and re-verifies even a valid local copy.
	Force bool
	// OfflineOK lets Always fall back to the last resolved copy when the
	// source is unreachable (Image.Offline says so).
	OfflineOK bool
	// Checksum pins an HTTP reference (like ref@sha256:…).
	Checksum digest.Digest
	// ChecksumURL names the checksum file of an HTTP reference.
	ChecksumURL string
	// Progress, when set, is called as bytes arrive (done, total; total -1
	// when unknown).
	Progress func(done, total int64)
	// Lease, when set, leases the image and its backing chain to this
	// holder (for LeaseTTL; 0 until removed), so prune and rm leave them
	// alone. Each digest is leased before it is looked up or fetched, so
	// no prune can delete it between its commit and its lease; leases
	// taken for a failed Ensure are given back.
	Lease    string
	LeaseTTL time.Duration

	// hold, set by Ensure from Lease, leases a digest before Ensure looks
	// it up or fetches it.
	hold func(digest.Digest) error
}

// take leases d when the Ensure has a lease (see Lease).
func (o EnsureOptions) take(d digest.Digest) error {
	if o.hold == nil {
		return nil
	}
	return o.hold(d)
}

// Link is one element of a qcow2 backing chain.
type Link struct {
	Path   string        `json:"path"`
	Digest digest.Digest `json:"digest,omitempty"`
	Format string        `json:"fmt"`
	// Backing is the backing file name as written in the image header.
	Backing string `json:"backing,omitempty"`
}

// Image is a verified local image.
type Image struct {
	Ref    string        `json:"ref"`
	Path   string        `json:"path"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Format string        `json:"fmt"`
	// Chain is the qcow2 backing chain below this image, top first.
	Chain []Link `json:"chain,omitempty"`
	// Fetched is true when bytes were transferred by this call.
	Fetched bool `json:"fetched"`
	// Offline is true when the source was unreachable and the last
	// resolved copy was used (EnsureOptions.OfflineOK).
	Offline bool `json:"offline,omitempty"`
}

// Cache is an open cache directory. It is safe for concurrent use, and
// several processes may open the same directory.
type Cache struct {
	dir  string
	opts Options
	log  *slog.Logger
}

// Open prepares dir for use. The cache keeps dir as an absolute path, so
// every path it hands out (and every qcow2 overlay made on one) means the
// same file whatever the caller's working directory.
func Open(dir string, opts Options) (*Cache, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", dir, err)
	}
	for _, d := range []string{"blobs/sha256", "ingest", "locks", "index/pointers", "index/blobs", "leases", "quarantine"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cache %s: %w", dir, err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = client.NewHTTPClient(client.Timeouts{})
	}
	return &Cache{dir: dir, opts: opts, log: log}, nil
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// BlobPath is where a committed blob lives.
func (c *Cache) BlobPath(d digest.Digest) string {
	return filepath.Join(c.dir, "blobs", "sha256", d.Encoded())
}

func (c *Cache) server() string {
	if c.opts.Depot == nil {
		return ""
	}
	return c.opts.Depot.Server()
}

func (c *Cache) sourceFor(r ref.Ref, o EnsureOptions) (source.Source, error) {
	if c.opts.Sources != nil {
		return c.opts.Sources(r, o)
	}
	switch r.Kind {
	case ref.Depot:
		if c.opts.Depot == nil {
			return nil, fmt.Errorf("%s is a depot reference but no server is configured (--server / DEPOT_SERVER): %w", r, errdefs.ErrInvalidArgument)
		}
		name := r.Name
		if r.UID != "" {
			name = r.UID
		}
		return &source.Depot{Client: c.opts.Depot, Ref: name}, nil
	case ref.HTTP:
		pin := r.Digest
		if o.Checksum != "" {
			if pin != "" && pin != o.Checksum {
				return nil, fmt.Errorf("%s: --checksum %s disagrees with the pinned digest: %w", r, o.Checksum, errdefs.ErrInvalidArgument)
			}
			pin = o.Checksum
		}
		return &source.HTTP{Client: c.opts.HTTPClient, URL: r.URL, Checksum: pin, ChecksumURL: o.ChecksumURL}, nil
	case ref.OCI:
		return source.NewOCI(r, c.opts.HTTPClient)
	}
	return nil, fmt.Errorf("reference %s: unsupported kind: %w", r, errdefs.ErrInvalidArgument)
}

// Ensure returns the verified local image for refStr.
func (c *Cache) Ensure(ctx context.Context, refStr string, o EnsureOptions) (img Image, err error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return Image{}, err
	}
	if o.Policy == "" {
		o.Policy = IfNotPresent
	}
	if o.Checksum != "" {
		if err := contenthash.Validate(o.Checksum); err != nil {
			return Image{}, err
		}
		if r.Kind != ref.HTTP {
			return Image{}, fmt.Errorf("--checksum applies to http(s) references; pin others with @sha256:…: %w", errdefs.ErrInvalidArgument)
		}
	}
	src, err := c.sourceFor(r, o)
	if err != nil {
		return Image{}, err
	}
	if o.Lease != "" {
		if err := validHolder(o.Lease); err != nil {
			return Image{}, err
		}
		ls := &ensureLeases{c: c, holder: o.Lease, ref: refStr, ttl: o.LeaseTTL}
		o.hold = ls.hold
		defer func() { ls.finish(img, err) }()
	}
	img, err = c.ensure(ctx, r, src, o)
	if err != nil {
		return Image{}, err
	}
	img.Ref = refStr
	chain, err := c.ensureChain(ctx, r, img, src, o, 0)
	if err != nil {
		return Image{}, err
	}
	img.Chain = chain
	return img, nil
}

func (c *Cache) ensure(ctx context.Context, r ref.Ref, src source.Source, o EnsureOptions) (Image, error) {
	// A content pin: the digest is the identity. For OCI the pin names a
	// manifest, which the source maps to the disk blob (immutably).
	want := r.Digest
	if r.Kind == ref.HTTP && o.Checksum != "" {
		want = o.Checksum
	}
	if want != "" && r.Kind != ref.OCI {
		if err := o.take(want); err != nil {
			return Image{}, err
		}
		if !o.Force {
			if img, ok, err := c.localLocked(ctx, want); err != nil || ok {
				return img, err // present and valid: no network at all
			}
		}
		if o.Policy == Never {
			return Image{}, fmt.Errorf("%s is not in the cache and the pull policy is Never: %w", want, errdefs.ErrNotFound)
		}
		return c.fetch(ctx, r, src, source.Descriptor{Digest: want, Size: -1}, o)
	}

	key := r.Key(c.server())
	ptr, havePtr, err := readJSON[Pointer](c.pointerPath(key))
	if err != nil {
		c.log.Warn("damaged pointer ignored", "key", key, "err", err)
		havePtr = false
	}
	usePtr := func(offline bool) (Image, bool, error) {
		if !havePtr {
			return Image{}, false, nil
		}
		if err := o.take(ptr.Digest); err != nil {
			return Image{}, false, err
		}
		img, ok, err := c.localLocked(ctx, ptr.Digest)
		img.Offline = offline && ok
		return img, ok, err
	}
	if r.Kind == ref.OCI && r.Digest != "" && !o.Force {
		// A pinned manifest: its layer never changes, so a valid local
		// copy answers with no network, whatever the policy.
		if img, ok, err := usePtr(false); err != nil || ok {
			return img, err
		}
	}
	switch {
	case o.Policy == Never:
		img, ok, err := usePtr(false)
		if err != nil || ok {
			return img, err
		}
		return Image{}, fmt.Errorf("%s is not in the cache and the pull policy is Never: %w", r, errdefs.ErrNotFound)
	case o.Policy == IfNotPresent && !o.Force:
		if img, ok, err := usePtr(false); err != nil || ok {
			return img, err
		}
	}
	desc, err := src.Resolve(ctx)
	if err != nil {
		if r.Kind == ref.OCI && want != "" && errors.Is(err, errdefs.ErrNotFound) {
			return Image{}, fmt.Errorf("%v: %w", err, &errdefs.DigestUnavailableError{Ref: r.String(), Want: want})
		}
		if errors.Is(err, errdefs.ErrUnavailable) && o.OfflineOK {
			if img, ok, lerr := usePtr(true); lerr == nil && ok {
				c.log.Warn("source unreachable; using the last resolved copy", "ref", r.String(), "digest", img.Digest, "resolved_at", ptr.ResolvedAt)
				return img, nil
			}
		}
		return Image{}, err
	}
	if err := o.take(desc.Digest); err != nil {
		return Image{}, err
	}
	var img Image
	if !o.Force {
		var ok bool
		img, ok, err = c.localLocked(ctx, desc.Digest)
		if err != nil {
			return Image{}, err
		}
		if !ok {
			img, err = c.fetch(ctx, r, src, desc, o)
		}
	} else {
		img, err = c.fetch(ctx, r, src, desc, o)
	}
	if err != nil {
		return Image{}, err
	}
	p := Pointer{Key: key, Ref: r.String(), Digest: img.Digest, Size: img.Size, ResolvedAt: time.Now().UTC(), Validator: desc.Validator,
		Source: src.String(), UID: desc.Identity, Upstream: "current", CheckedAt: time.Now().UTC()}
	if err := writeJSON(c.pointerPath(key), p, true); err != nil {
		return Image{}, c.diskErr(fmt.Errorf("cache index: %w", err))
	}
	return img, nil
}

// local returns the committed blob d if it is present and its fingerprint
// matches the verified record. A changed fingerprint, or a blob without a
// record (a crash between rename and record), is re-hashed first. The
// caller holds d's lock (lockDigest): local rewrites d's record.
func (c *Cache) local(d digest.Digest) (Image, bool, error) {
	path := c.BlobPath(d)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, false, nil
	} else if err != nil {
		return Image{}, false, err
	}
	rec, ok, err := readJSON[BlobRecord](c.recordPath(d))
	if testHookRecordRead != nil {
		testHookRecordRead(d)
	}
	if err != nil || !ok || rec.Stat != fingerprint(fi) || rec.Digest != d {
		rec, err = c.reverify(d, path, rec)
		if err != nil {
			return Image{}, false, err
		}
		if rec.Digest == "" {
			return Image{}, false, nil // it was bad and is gone: fetch again
		}
	}
	// last_used only orders LRU eviction: refresh it at most once a minute,
	// so a warm ensure (the hot path) is a stat and a small read, no write.
	if now := time.Now().UTC(); now.Sub(rec.LastUsed) > lastUsedResolution {
		rec.LastUsed = now
		if err := writeJSON(c.recordPath(d), rec, false); err != nil {
			c.log.Debug("last_used not recorded", "digest", d, "err", err)
		}
	}
	return Image{Path: path, Digest: d, Size: rec.Size, Format: rec.Format}, true, nil
}

// reverify re-hashes a committed blob. A blob that no longer matches its
// digest is moved to quarantine/ and reported as absent. The caller holds
// d's lock.
func (c *Cache) reverify(d digest.Digest, path string, old BlobRecord) (BlobRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return BlobRecord{}, err
	}
	defer f.Close()
	h := contenthash.NewDualHasher()
	defer h.Close()
	var sniff format.Sniffer
	if _, err := io.CopyBuffer(io.MultiWriter(h, &sniff), f, make([]byte, 1<<20)); err != nil {
		return BlobRecord{}, err
	}
	if h.Digest() != d {
		c.log.Error("cached blob is corrupt; quarantined", "digest", d, "got", h.Digest())
		c.quarantine(d)
		return BlobRecord{}, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return BlobRecord{}, err
	}
	rec := BlobRecord{Digest: d, Size: h.Size(), BLAKE3: h.BLAKE3(), Format: sniff.Format(), VerifiedAt: time.Now().UTC(), Stat: fingerprint(fi), Source: old.Source, Ref: old.Ref, LastUsed: old.LastUsed}
	if err := writeJSON(c.recordPath(d), rec, true); err != nil {
		return BlobRecord{}, c.diskErr(fmt.Errorf("cache index: %w", err))
	}
	return rec, nil
}

// quarantine moves a corrupt blob aside, for forensics, and forgets it. A
// holder that has it open keeps reading the same inode (a rename does not
// disturb open files); the next Ensure fetches a good copy at the path.
// The caller holds d's lock, so the Quarantined mark cannot be lost to a
// concurrent record update.
func (c *Cache) quarantine(d digest.Digest) {
	q := filepath.Join(c.dir, "quarantine", d.Encoded()+"."+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(c.BlobPath(d), q); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Error("quarantine failed", "digest", d, "err", err)
	}
	rec, ok, _ := readJSON[BlobRecord](c.recordPath(d))
	if !ok {
		rec = BlobRecord{Digest: d}
	}
	rec.Quarantined = q
	writeJSON(c.recordPath(d), rec, true)
}

// fetch transfers want.Digest from src (once across processes), verifies it
// and commits it. want.Size, when known (>= 0), is the size the source
// declared when it resolved; want.Validator makes a resume conditional.
func (c *Cache) fetch(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions) (Image, error) {
	d := want.Digest
	if err := contenthash.Validate(d); err != nil {
		return Image{}, err
	}
	lock := flock.New(filepath.Join(c.dir, "locks", d.Encoded()+".lock"))
	if _, err := lock.TryLockContext(ctx, 20*time.Millisecond); err != nil {
		return Image{}, fmt.Errorf("waiting for the transfer of %s: %w", d, err)
	}
	defer lock.Unlock()
	if !o.Force {
		if img, ok, err := c.local(d); err != nil || ok {
			return img, err // another process fetched it while we waited
		}
	}
	img, err := c.transfer(ctx, r, src, want, o)
	// An interrupted transfer (a head died, the network dropped) resumes
	// from what it has: by Range, on the next head of a cluster. A source
	// that stalled is asked again only when it has another head to go to:
	// waiting out the same silent peer again helps nobody.
	for attempt := 1; attempt <= 3 && err != nil && errors.Is(err, errdefs.ErrUnavailable) && ctx.Err() == nil; attempt++ {
		if client.IsStall(err) && source.Heads(src) < 2 {
			break
		}
		c.log.Warn("transfer interrupted; resuming", "digest", d, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
		img, err = c.transfer(ctx, r, src, want, o)
	}
	if err != nil && errors.Is(err, errdefs.ErrNotFound) {
		return Image{}, c.unavailable(ctx, r, src, d)
	}
	if err != nil {
		return Image{}, err
	}
	img.Fetched = true
	return img, nil
}

// unavailable builds the typed error for a digest the source cannot supply,
// naming what the pointer holds now.
func (c *Cache) unavailable(ctx context.Context, r ref.Ref, src source.Source, want digest.Digest) error {
	e := &errdefs.DigestUnavailableError{Ref: r.String(), Want: want}
	if desc, err := src.Resolve(ctx); err == nil && desc.Digest != want {
		e.Have = desc.Digest
	}
	return e
}

type ingestState struct {
	Source    string `json:"source"`
	Validator string `json:"validator,omitempty"`
	// Prefix is how many leading bytes of the part file are known written
	// in order. -1 means the file was written strictly sequentially, so its
	// whole length is a valid prefix.
	Prefix int64 `json:"prefix"`
}

// Parallel transfers: blobs larger than parallelMin, from sources that honour
// ranges, are fetched as segments over Options.Connections connections.
const (
	parallelMin = 64 << 20
	segmentSize = 16 << 20
)

// partial is an ingest in progress: the part file and the running hashes of
// its verified-in-order prefix.
type partial struct {
	c         *Cache
	d         digest.Digest
	f         *os.File
	path      string
	statePath string
	st        ingestState
	h         *contenthash.DualHasher
	sniff     *format.Sniffer
	done      int64  // bytes hashed in order
	ref       string // the reference it is fetched through
}

func (p *partial) hash(b []byte) {
	p.h.Write(b)
	p.sniff.Write(b)
	p.done += int64(len(b))
}

func (p *partial) reset() error {
	if err := p.f.Truncate(0); err != nil {
		return p.c.diskErr(err)
	}
	p.h.Close()
	p.h, p.sniff, p.done = contenthash.NewDualHasher(), &format.Sniffer{}, 0
	return nil
}

// discard removes the partial (after a verification failure or ENOSPC).
func (p *partial) discard() {
	p.f.Close()
	os.Remove(p.path)
	os.Remove(p.statePath)
}

func (p *partial) saveState() error {
	return writeJSON(p.statePath, p.st, false)
}

func (c *Cache) transfer(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions) (Image, error) {
	d, validator := want.Digest, want.Validator
	p := &partial{c: c, d: d, ref: r.String(), path: filepath.Join(c.dir, "ingest", d.Encoded()+".part"),
		statePath: filepath.Join(c.dir, "ingest", d.Encoded()+".json"), h: contenthash.NewDualHasher(), sniff: &format.Sniffer{}}
	defer func() { p.h.Close() }()
	st, ok, _ := readJSON[ingestState](p.statePath)
	if !ok {
		st = ingestState{Prefix: 0} // no state: nothing in the part file is known good
	}
	if st.Source != src.String() {
		// Another origin's partial: the bytes are still content of d (the
		// prefix rule holds), but its validator means nothing here.
		st.Source, st.Validator = src.String(), ""
	}
	p.st = st
	if validator == "" {
		validator = st.Validator
	}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return Image{}, c.diskErr(err)
	}
	p.f = f
	defer f.Close()
	// Resume: keep only the in-order prefix, re-hash it, ask for the rest.
	if st.Prefix >= 0 {
		if err := f.Truncate(st.Prefix); err != nil {
			return Image{}, c.diskErr(err)
		}
	}
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		p.hash(buf[:n])
		if err == io.EOF {
			break
		} else if err != nil {
			return Image{}, err
		}
	}
	off := p.done
	// A size the source declared on resolving is claimed before any
	// request for the body: a manifest that says 64 TiB fails here.
	if want.Size >= 0 {
		if err := c.claim(p, src, want.Size); err != nil {
			return Image{}, err
		}
	}
	var body source.Body
	if off > 0 && p.h.Digest() == d {
		// A run killed between the last byte and the rename left the whole
		// content: commit it without asking the source for anything.
		body = source.Body{ReadCloser: io.NopCloser(eofReader{}), Offset: off, Size: off}
	} else {
		body, err = src.Open(ctx, d, off, -1, validator)
		if err != nil && off > 0 && !errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, errdefs.ErrUnavailable) && ctx.Err() == nil {
			// The source refused the range (e.g. 416: the partial is not a
			// prefix of this content): start again from zero.
			c.log.Info("ranged resume refused; restarting", "digest", d, "err", err)
			body, err = src.Open(ctx, d, 0, -1, "")
		}
		if err != nil {
			return Image{}, err
		}
	}
	defer body.Close()
	if body.Offset != off { // the source sent everything (no range, or it changed)
		c.log.Info("restarting download from the beginning", "digest", d, "had", off)
		if err := p.reset(); err != nil {
			return Image{}, err
		}
	}
	if _, err := f.Seek(p.done, io.SeekStart); err != nil {
		return Image{}, err
	}
	p.st.Validator = body.Validator
	// The expected size: what the body declares, else what the source
	// declared on resolving. Two declarations that disagree are a lie.
	size := body.Size
	if size < 0 {
		size = want.Size
	} else if want.Size >= 0 && want.Size != size {
		return Image{}, fmt.Errorf("%s declared %d bytes for %s, then sent a body of %d: %w", src, want.Size, d, size,
			&errdefs.VerificationError{Want: d, WantSize: want.Size, GotSize: size})
	}
	if size >= 0 && size != want.Size {
		if err := c.claim(p, src, size); err != nil {
			return Image{}, err
		}
	}
	conns := max(c.opts.Connections, 1)
	if conns > 1 && body.Ranges && body.Size >= 0 && body.Size-p.done > parallelMin {
		body.Close()
		err = c.parallel(ctx, p, src, body.Size, body.Validator, conns, o)
	} else {
		p.st.Prefix = -1
		if err := p.saveState(); err != nil {
			return Image{}, c.diskErr(err)
		}
		lim, lerr := c.limit(p, size)
		if lerr != nil {
			return Image{}, lerr
		}
		err = c.sequential(p, src, body, buf, lim, o)
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, errOverlong) {
			p.discard()
		}
		if ctx.Err() != nil {
			return Image{}, ctx.Err()
		}
		return Image{}, err
	}
	if size >= 0 && p.done != size {
		return Image{}, fmt.Errorf("download of %s from %s ended at %d of %d bytes (it resumes next time): %w", d, src, p.done, size, errdefs.ErrUnavailable)
	}
	return c.commit(p, src)
}

// sequential streams body to the end of the part file, hashing in order.
// Three stages overlap: a goroutine reads the next chunks from the network
// while this one hashes the current chunk and a helper writes it to the
// file. Memory is bounded by seqBuffers chunks of len(buf).
//
// The body is read through a limit of lim.max-p.done+1 bytes: one byte past
// the bound is proof enough that the body is too long, and nothing after it
// is read.
func (c *Cache) sequential(p *partial, src source.Source, body source.Body, buf []byte, lim bound, o EnsureOptions) error {
	type chunk struct {
		b   []byte
		err error
	}
	free := make(chan []byte, seqBuffers)
	free <- buf
	for range seqBuffers - 1 {
		free <- make([]byte, len(buf))
	}
	full := make(chan chunk, seqBuffers)
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	defer func() {
		close(stop)
		body.Close() // ends a Read the reader is blocked in
		<-readerDone
	}()
	in := io.LimitReader(body, lim.max-p.done+1)
	go func() {
		defer close(readerDone)
		for {
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			n, err := io.ReadFull(in, b)
			select {
			case full <- chunk{b[:n], err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	werr := make(chan error, 1)
	for ch := range full {
		if p.done+int64(len(ch.b)) > lim.max {
			return lim.err()
		}
		if len(ch.b) > 0 {
			go func() { _, err := p.f.Write(ch.b); werr <- err }()
			p.hash(ch.b)
			if err := <-werr; err != nil {
				return c.diskErr(err)
			}
			if o.Progress != nil {
				o.Progress(p.done, body.Size)
			}
		}
		free <- ch.b[:cap(ch.b)]
		if ch.err == io.EOF || ch.err == io.ErrUnexpectedEOF {
			return nil
		}
		if ch.err != nil {
			if errors.Is(ch.err, errdefs.ErrUnavailable) { // a stall keeps its type
				return fmt.Errorf("download of %s from %s interrupted after %d bytes (it resumes next time): %w", p.d, src, p.done, ch.err)
			}
			return fmt.Errorf("download of %s from %s interrupted after %d bytes (it resumes next time): %v: %w", p.d, src, p.done, ch.err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

// seqBuffers is how many chunks a sequential download has in flight: one
// being read, one being written and hashed, and one spare.
const seqBuffers = 3

// parallel fetches [p.done, size) as segments over conns connections. Each
// worker writes its segment in place; this goroutine hashes segments in
// order as they complete, reading them back from the page cache, so the
// content is verified without a second transfer. The state file records the
// in-order prefix, so an interrupted run resumes cleanly.
//
// Segments are scheduled lazily: at most parallelAhead(conns) are handed
// out beyond the one being hashed, so memory does not grow with size (a
// source may declare any size). Every worker has returned before parallel
// does, so none writes to the part file after transfer closes it.
func (c *Cache) parallel(ctx context.Context, p *partial, src source.Source, size int64, validator string, conns int, o EnsureOptions) error {
	start := p.done
	// Record the in-order prefix before any out-of-order write, so a crash
	// from here on never lets a later run hash a hole.
	p.st.Prefix = start
	if err := p.saveState(); err != nil {
		return c.diskErr(err)
	}
	nseg := (size - start + segmentSize - 1) / segmentSize
	type segment struct {
		off, n int64
		done   chan error // buffered: a worker never waits for the hasher
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan segment)                       // to the workers
	order := make(chan segment, conns*parallelAhead) // to the hasher, in order; its capacity is the look-ahead
	g.Go(func() error {                              // the scheduler
		defer close(jobs)
		defer close(order)
		for i := range nseg {
			off := start + i*segmentSize
			sg := segment{off: off, n: min(segmentSize, size-off), done: make(chan error, 1)}
			select {
			case order <- sg:
			case <-gctx.Done():
				return nil
			}
			select {
			case jobs <- sg:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	for range int(min(int64(conns), nseg)) {
		g.Go(func() error {
			buf := make([]byte, 1<<20)
			// A failed segment is reported to the hasher, which stops at
			// it after hashing the good ones before it; the other
			// workers go on until then, so the kept prefix is as long
			// as it can be.
			for sg := range jobs {
				sg.done <- c.fetchSegment(gctx, p, src, sg.off, sg.n, validator, buf)
			}
			return nil
		})
	}
	g.Go(func() error { // the hasher, in order
		buf := make([]byte, 1<<20)
		for sg := range order {
			var err error
			select {
			case err = <-sg.done:
			case <-gctx.Done(): // the caller gave up
				return gctx.Err()
			}
			if err != nil {
				return err
			}
			end := sg.off + sg.n
			for pos := sg.off; pos < end; {
				n, err := p.f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
				if err != nil && !(err == io.EOF && pos+int64(n) == end) {
					return err
				}
				p.hash(buf[:n])
				pos += int64(n)
			}
			p.st.Prefix = p.done
			if err := p.saveState(); err != nil {
				return c.diskErr(err)
			}
			if o.Progress != nil {
				o.Progress(p.done, size)
			}
		}
		return nil
	})
	return g.Wait()
}

// parallelAhead is how many segments per connection may be fetched ahead of
// the one being hashed.
const parallelAhead = 2

func (c *Cache) fetchSegment(ctx context.Context, p *partial, src source.Source, off, n int64, validator string, buf []byte) error {
	body, err := src.Open(ctx, p.d, off, n, validator)
	if err != nil {
		return err
	}
	defer body.Close()
	if body.Offset != off {
		return fmt.Errorf("%s ignored a range request during a parallel download: %w", src, errdefs.ErrUnavailable)
	}
	pos, end := off, off+n
	for pos < end {
		k, rerr := io.ReadFull(body, buf[:min(int64(len(buf)), end-pos)])
		if k > 0 {
			if _, err := p.f.WriteAt(buf[:k], pos); err != nil {
				return c.diskErr(err)
			}
			pos += int64(k)
		}
		if rerr != nil {
			if pos == end {
				break
			}
			return fmt.Errorf("segment at %d of %s from %s interrupted (it resumes next time): %v: %w", off, p.d, src, rerr, errdefs.ErrUnavailable)
		}
	}
	return nil
}

// commit verifies the digest, then fsyncs, makes read-only and renames the
// part file into blobs/, and records it.
func (c *Cache) commit(p *partial, src source.Source) (Image, error) {
	d := p.d
	got := p.h.Digest()
	if got != d {
		p.discard()
		return Image{}, fmt.Errorf("%s sent content that is not %s: %w", src, d, &errdefs.VerificationError{Want: d, Got: got})
	}
	f := p.f
	// Content that names host files never becomes a visible blob.
	if _, err := c.inspect(f, p.sniff.Format(), d); err != nil {
		p.discard()
		return Image{}, err
	}
	if err := f.Sync(); err != nil {
		return Image{}, c.diskErr(err)
	}
	if err := f.Chmod(0o444); err != nil {
		return Image{}, err
	}
	if err := f.Close(); err != nil {
		return Image{}, c.diskErr(err)
	}
	path := c.BlobPath(d)
	if err := os.Rename(p.path, path); err != nil {
		return Image{}, err
	}
	os.Remove(p.statePath)
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return Image{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Image{}, err
	}
	now := time.Now().UTC()
	rec := BlobRecord{Digest: d, Size: p.done, BLAKE3: p.h.BLAKE3(), Format: p.sniff.Format(), VerifiedAt: now, LastUsed: now, Stat: fingerprint(fi), Source: src.String(), Ref: p.ref}
	if err := writeJSON(c.recordPath(d), rec, true); err != nil {
		return Image{}, c.diskErr(err)
	}
	c.log.Info("fetched", "digest", d, "bytes", p.done, "from", src.String())
	return Image{Path: path, Digest: d, Size: p.done, Format: rec.Format}, nil
}

func (c *Cache) diskErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("cache %s: free space or prune the cache, then retry: %w: %w", c.dir, err, errdefs.ErrNoSpace)
	}
	return fmt.Errorf("cache %s: %w", c.dir, err)
}

// lastUsedResolution is how stale a blob's last_used may be.
const lastUsedResolution = time.Minute

// maxChain bounds backing-chain depth (and breaks cycles).
const maxChain = 16

// ensureChain makes sure every file a qcow2 image makes qemu open is a
// verified blob of this cache: each backing name must resolve, exactly as
// qemu resolves it (relative to the image's own directory), to the blob of
// the digest it names, with a recorded format that matches what that blob
// is (qcow2.Resolve). It fetches missing links by digest when the source
// can. Anything else is an *errdefs.UnsafeContentError, never a path.
func (c *Cache) ensureChain(ctx context.Context, parent ref.Ref, img Image, src source.Source, o EnsureOptions, depth int) ([]Link, error) {
	if depth >= maxChain {
		return nil, fmt.Errorf("qcow2 backing chain of %s is deeper than %d (a cycle?): %w", img.Digest, maxChain, errdefs.ErrCorrupt)
	}
	if img.Format != format.QCOW2 && img.Format != format.Raw { // nothing to read
		return nil, unsafeIn(format.RefuseNamesFiles(img.Format), img.Digest)
	}
	f, err := os.Open(img.Path)
	if err != nil {
		return nil, c.diskErr(err)
	}
	b, err := c.inspect(f, img.Format, img.Digest)
	f.Close()
	if err != nil || b.Digest == "" {
		return nil, err
	}
	if err := o.take(b.Digest); err != nil {
		return nil, err
	}
	base, ok, err := c.localLocked(ctx, b.Digest)
	if err != nil {
		return nil, err
	}
	if !ok {
		if !src.ByDigest() || o.Policy == Never {
			return nil, fmt.Errorf("%s needs backing file %s: %w", img.Digest, b.Digest,
				&errdefs.DigestUnavailableError{Ref: src.String(), Want: b.Digest})
		}
		if base, err = c.fetch(ctx, parent, src, source.Descriptor{Digest: b.Digest, Size: -1}, o); err != nil {
			var du *errdefs.DigestUnavailableError
			if errors.As(err, &du) {
				return nil, fmt.Errorf("%s needs backing file %s: %w", img.Digest, b.Digest,
					&errdefs.DigestUnavailableError{Ref: src.String(), Want: b.Digest})
			}
			return nil, err
		}
	}
	if base.Format != b.Format {
		// qemu would read the base as b.Format; depot verified it as what
		// it is. A qcow2 read as raw (or the reverse) is not the disk the
		// image was made on.
		return nil, &errdefs.UnsafeContentError{Digest: img.Digest, What: "backing file", Name: b.Name,
			Reason: fmt.Sprintf("the image records backing format %s, but blob %s is %s", b.Format, b.Digest, base.Format),
			Fix:    fmt.Sprintf("qemu-img rebase -u -b %s -F %s IMAGE", b.Digest.Encoded(), base.Format)}
	}
	link := Link{Path: base.Path, Digest: b.Digest, Format: base.Format, Backing: b.Name}
	rest, err := c.ensureChain(ctx, parent, base, src, o, depth+1)
	if err != nil {
		return nil, err
	}
	return append([]Link{link}, rest...), nil
}

// inspect applies depot's content rules to a blob read through r (a
// committed one, or one about to be committed): no format whose images
// name other files, and a qcow2 only with a backing reference that
// qcow2.Resolve accepts in this cache's blob directory. It returns that
// reference (zero when there is none). A "raw" format is looked at again,
// since records written before depot knew qcow v1, qed and vmdk
// descriptors called them raw; that costs one 4 KiB read.
func (c *Cache) inspect(r io.ReaderAt, fmtName string, d digest.Digest) (qcow2.Backing, error) {
	if fmtName == format.Raw {
		head := make([]byte, 4096)
		n, err := r.ReadAt(head, 0)
		if err != nil && err != io.EOF {
			return qcow2.Backing{}, c.diskErr(err)
		}
		fmtName = format.Detect(head[:n])
	}
	if err := format.RefuseNamesFiles(fmtName); err != nil {
		return qcow2.Backing{}, unsafeIn(err, d)
	}
	if fmtName != format.QCOW2 {
		return qcow2.Backing{}, nil
	}
	h, err := qcow2.ReadHeader(r)
	if err != nil {
		return qcow2.Backing{}, fmt.Errorf("qcow2 header of %s: %v: %w", d, err, errdefs.ErrCorrupt)
	}
	b, err := qcow2.Resolve(h, filepath.Dir(c.BlobPath(d)))
	return b, unsafeIn(err, d)
}

// unsafeIn names the image in an unsafe-content error.
func unsafeIn(err error, d digest.Digest) error {
	var ue *errdefs.UnsafeContentError
	if errors.As(err, &ue) {
		ue.Digest = d
	}
	return err
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
