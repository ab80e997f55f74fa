package cache

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
)

// Upstream states reported by CheckSources.
const (
	UpstreamCurrent     = "current"
	UpstreamChanged     = "changed"
	UpstreamGone        = "gone"
	UpstreamUnreachable = "unreachable"
)

// SourceCheck is the outcome of checking one pointer against its source.
type SourceCheck struct {
	Ref      string        `json:"ref"`
	Cached   digest.Digest `json:"cached"`
	Upstream digest.Digest `json:"upstream,omitempty"`
	Status   string        `json:"status"`
	Detail   string        `json:"detail,omitempty"`
	// Refreshed is set when --refresh fetched the new content.
	Refreshed bool `json:"refreshed,omitempty"`
}

// CheckSources asks every pointer's source what it names now (metadata or a
// checksum file, never a body) and records the answer in the pointer.
// With refresh, changed entries are fetched.
func (c *Cache) CheckSources(ctx context.Context, refresh bool) ([]SourceCheck, error) {
	ptrs, err := c.pointers()
	if err != nil {
		return nil, err
	}
	sort.Slice(ptrs, func(i, j int) bool { return ptrs[i].Ref < ptrs[j].Ref })
	var out []SourceCheck
	for _, p := range ptrs {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		r, err := ref.Parse(p.Ref)
		if err != nil || r.Pinned() {
			continue // a pinned manifest cannot change
		}
		if !c.ownsPointer(p) {
			out = append(out, SourceCheck{Ref: p.Ref, Cached: p.Digest, Status: UpstreamUnreachable,
				Detail: "resolved against another server (" + p.Source + "); run with that --server"})
			continue
		}
		chk := SourceCheck{Ref: p.Ref, Cached: p.Digest}
		src, err := c.sourceFor(r, EnsureOptions{})
		var desc sourceDesc
		if err == nil {
			d, rerr := src.Resolve(ctx)
			desc, err = sourceDesc{d.Digest, d.Identity}, rerr
		}
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			chk.Status, chk.Detail = UpstreamGone, err.Error()
		case errors.Is(err, errdefs.ErrUnavailable):
			chk.Status, chk.Detail = UpstreamUnreachable, err.Error()
		case err != nil:
			chk.Status, chk.Detail = UpstreamUnreachable, err.Error()
		case p.UID != "" && desc.identity != "" && desc.identity != p.UID:
			chk.Status, chk.Upstream = UpstreamChanged, desc.digest
			chk.Detail = fmt.Sprintf("image %s was deleted; the name now belongs to UID %s", p.UID, desc.identity)
		case desc.digest != p.Digest:
			chk.Status, chk.Upstream = UpstreamChanged, desc.digest
		default:
			chk.Status, chk.Upstream = UpstreamCurrent, desc.digest
		}
		if chk.Status != UpstreamUnreachable {
			p.Upstream, p.CheckedAt = chk.Status, time.Now().UTC()
			writeJSON(c.pointerPath(p.Key), p, false)
		}
		if refresh && chk.Status == UpstreamChanged {
			if _, err := c.Ensure(ctx, p.Ref, EnsureOptions{Policy: Always}); err != nil {
				chk.Detail = strings.TrimPrefix(chk.Detail+"; refresh failed: "+err.Error(), "; ")
			} else {
				chk.Refreshed = true
			}
		}
		out = append(out, chk)
	}
	return out, nil
}

type sourceDesc struct {
	digest   digest.Digest
	identity string
}
