package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Lease says a holder (a VM, a job) is using a blob. Prune and rm never
// delete a leased blob and verification never takes one away from its
// holder.
//
// Leases fail closed: when any lease cannot be read (an I/O error, a file
// that does not decode, something other than a regular file in leases/),
// Leases returns an error matching ErrCorrupt and prune and rm delete
// nothing, since they cannot tell what is in use.
type Lease struct {
	Holder  string        `json:"holder"`
	Digest  digest.Digest `json:"digest"`
	Ref     string        `json:"ref,omitempty"`
	Created time.Time     `json:"created"`
	// Expires is zero for a lease that lasts until removed.
	Expires time.Time `json:"expires,omitzero"`
}

// Expired reports whether the lease has run out at now.
func (l Lease) Expired(now time.Time) bool { return !l.Expires.IsZero() && now.After(l.Expires) }

func (c *Cache) leasePath(holder string, d digest.Digest) string {
	h := sha256.Sum256([]byte(holder + "\x00" + d.String()))
	return filepath.Join(c.dir, "leases", hex.EncodeToString(h[:16])+".json")
}

// validHolder bounds a holder ID (it is stored, never used as a path).
func validHolder(h string) error {
	if h == "" || len(h) > 256 || strings.ContainsAny(h, "\x00\n") {
		return fmt.Errorf("lease holder %q: want 1-256 bytes without newlines: %w", h, errdefs.ErrInvalidArgument)
	}
	return nil
}

// AddLease leases d (and nothing else) to holder for ttl (0: until removed).
func (c *Cache) AddLease(holder string, d digest.Digest, refStr string, ttl time.Duration) (Lease, error) {
	if err := validHolder(holder); err != nil {
		return Lease{}, err
	}
	now := time.Now().UTC()
	l := Lease{Holder: holder, Digest: d, Ref: refStr, Created: now}
	if ttl > 0 {
		l.Expires = now.Add(ttl)
	}
	if err := writeJSON(c.leasePath(holder, d), l, true); err != nil {
		return Lease{}, c.diskErr(fmt.Errorf("lease: %w", err))
	}
	return l, nil
}

// unreadableLease is the error for a lease prune and rm cannot read.
func unreadableLease(path string, err error) error {
	return fmt.Errorf("lease %s cannot be read (%v): prune and rm delete nothing until it is repaired or removed: %w", path, err, errdefs.ErrCorrupt)
}

// Leases lists the leases, including expired ones not reaped yet. Any
// lease it cannot read is an error matching ErrCorrupt (see Lease).
func (c *Cache) Leases() ([]Lease, error) {
	dir := filepath.Join(c.dir, "leases")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, unreadableLease(dir, err)
	}
	var out []Lease
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // atomicfile's temporary files
		}
		path := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() {
			// Never opened: a FIFO would block the read forever.
			return nil, unreadableLease(path, fmt.Errorf("not a regular file (%s)", e.Type()))
		}
		l, ok, err := readJSON[Lease](path)
		if err != nil {
			return nil, unreadableLease(path, err)
		}
		if !ok {
			continue // released meanwhile
		}
		if l.Digest.Validate() != nil || validHolder(l.Holder) != nil {
			return nil, unreadableLease(path, errors.New("no valid holder and digest"))
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// RemoveLeases drops holder's leases (on d only, when d is set) and returns
// how many it removed; none is ErrNotFound.
func (c *Cache) RemoveLeases(holder string, d digest.Digest) (int, error) {
	ls, err := c.Leases()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range ls {
		if l.Holder == holder && (d == "" || l.Digest == d) {
			if os.Remove(c.leasePath(l.Holder, l.Digest)) == nil {
				n++
			}
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("no lease held by %q: %w", holder, errdefs.ErrNotFound)
	}
	return n, nil
}

// ReapLeases removes expired leases and returns how many.
func (c *Cache) ReapLeases(now time.Time) (int, error) {
	ls, err := c.Leases()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range ls {
		if l.Expired(now) && os.Remove(c.leasePath(l.Holder, l.Digest)) == nil {
			n++
		}
	}
	return n, nil
}

// leased is the set of digests with a live lease.
func (c *Cache) leased(now time.Time) (map[digest.Digest]bool, error) {
	set := map[digest.Digest]bool{}
	ls, err := c.Leases()
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if !l.Expired(now) {
			set[l.Digest] = true
		}
	}
	return set, nil
}

// holders lists who holds a live lease on d, read afresh: a deletion asks
// it under d's lock, just before it deletes.
func (c *Cache) holders(d digest.Digest, now time.Time) ([]string, error) {
	ls, err := c.Leases()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range ls {
		if l.Digest == d && !l.Expired(now) {
			out = append(out, l.Holder)
		}
	}
	return out, nil
}

// ensureLeases takes an Ensure's leases the way containerd's WithLease
// does: each digest is leased before Ensure looks it up or fetches it, so
// from the moment its blob is visible no prune can delete it. Leases it
// created are given back if Ensure fails, or if the digest did not end up
// in the image (a pointer that moved).
type ensureLeases struct {
	c       *Cache
	holder  string
	ref     string
	ttl     time.Duration
	created []digest.Digest // leases that did not exist before
}

// hold leases d.
func (l *ensureLeases) hold(d digest.Digest) error {
	if slices.Contains(l.created, d) {
		return nil
	}
	_, err := os.Lstat(l.c.leasePath(l.holder, d))
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return unreadableLease(l.c.leasePath(l.holder, d), err)
	}
	if _, err := l.c.AddLease(l.holder, d, l.ref, l.ttl); err != nil {
		return err
	}
	if !existed {
		l.created = append(l.created, d)
	}
	return nil
}

// finish keeps the leases on the image's digests (all of them, when err is
// nil) and removes the others it created.
func (l *ensureLeases) finish(img Image, err error) {
	keep := map[digest.Digest]bool{}
	if err == nil {
		keep[img.Digest] = true
		for _, k := range img.Chain {
			keep[k.Digest] = true
		}
	}
	for _, d := range l.created {
		if !keep[d] {
			os.Remove(l.c.leasePath(l.holder, d))
		}
	}
}
