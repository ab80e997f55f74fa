package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Lease says a holder (a VM, a job) is using a blob. Prune never deletes a
// leased blob and verification never takes one away from its holder.
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
	return l, writeJSON(c.leasePath(holder, d), l, true)
}

// Leases lists the leases, including expired ones not reaped yet.
func (c *Cache) Leases() ([]Lease, error) {
	dir := filepath.Join(c.dir, "leases")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Lease
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if l, ok, err := readJSON[Lease](filepath.Join(dir, e.Name())); err == nil && ok {
			out = append(out, l)
		}
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
func (c *Cache) leased(now time.Time) map[digest.Digest]bool {
	set := map[digest.Digest]bool{}
	ls, _ := c.Leases()
	for _, l := range ls {
		if !l.Expired(now) {
			set[l.Digest] = true
		}
	}
	return set
}

// leaseImage leases an ensured image and its backing chain.
func (c *Cache) leaseImage(ctx context.Context, img Image, holder string, ttl time.Duration) error {
	if _, err := c.AddLease(holder, img.Digest, img.Ref, ttl); err != nil {
		return err
	}
	for _, l := range img.Chain {
		if l.Digest != "" {
			if _, err := c.AddLease(holder, l.Digest, img.Ref, ttl); err != nil {
				return err
			}
		}
	}
	return nil
}
