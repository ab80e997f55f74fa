package catalog

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Image is one Image object (seed 004).
type Image struct {
	UID            string    `json:"uid"`
	Name           string    `json:"name"`
	Description    string    `json:"description,omitempty"`
	Frozen         bool      `json:"frozen,omitempty"`
	Parent         string    `json:"parent,omitempty"` // a UID
	Distro         string    `json:"distro,omitempty"`
	Content        *Content  `json:"content,omitempty"`
	History        []Content `json:"history,omitempty"` // oldest first; the last entry is the current content
	Created        time.Time `json:"created"`
	LastModified   time.Time `json:"last_modified"`
	LastModifiedBy string    `json:"last_modified_by,omitempty"`
	// LastModifiedOn names the head that made the last change (its
	// --head-name); empty in records written before heads recorded it.
	LastModifiedOn string `json:"last_modified_on,omitempty"`
}

// Content is one content revision of an image: a reference to a blob.
type Content struct {
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	MTime   time.Time     `json:"mtime"`
	Format  string        `json:"fmt"`
	BLAKE3  string        `json:"blake3,omitempty"`
	Chunks  digest.Digest `json:"chunks,omitempty"` // sha256 of the blob's chunk index; empty if none was stored at upload
	By      string        `json:"by,omitempty"`
	Message string        `json:"message,omitempty"`
	// On names the head that received the upload; empty in records
	// written before heads recorded it.
	On string `json:"on,omitempty"`
	// Provenance is how the content was made, as its uploader declared
	// it; nil when it did not (and in records written before it existed).
	// A pointer, so that Content stays comparable.
	Provenance *Provenance `json:"provenance,omitempty"`
}

// Provenance records how a content revision was made (depot image
// capture). Stored as the uploader declared it, after the server's checks.
type Provenance struct {
	Method       string    `json:"method"`
	Host         string    `json:"host"`
	Root         string    `json:"root"`
	Excludes     []string  `json:"excludes"`
	Emptied      []string  `json:"emptied,omitempty"`
	Format       string    `json:"format"`
	Compress     string    `json:"compress"`
	Time         time.Time `json:"time"`
	ChangedFiles int       `json:"changed_files,omitempty"`
}

// clone is a deep copy of c (its provenance not shared).
func (c Content) clone() Content {
	if p := c.Provenance; p != nil {
		cp := *p
		cp.Excludes = append([]string(nil), p.Excludes...)
		cp.Emptied = append([]string(nil), p.Emptied...)
		c.Provenance = &cp
	}
	return c
}

// Digests is the set of blobs the image references: its current content and
// every retained revision.
func (img *Image) Digests() map[digest.Digest]bool {
	set := map[digest.Digest]bool{}
	if img == nil {
		return set
	}
	if img.Content != nil {
		set[img.Content.Digest] = true
	}
	for _, c := range img.History {
		set[c.Digest] = true
	}
	return set
}

// RefDiff returns the digests whose reference count goes up and down when an
// image changes from before to after (either may be nil).
func RefDiff(before, after *Image) (inc, dec []digest.Digest) {
	b, a := before.Digests(), after.Digests()
	for d := range a {
		if !b[d] {
			inc = append(inc, d)
		}
	}
	for d := range b {
		if !a[d] {
			dec = append(dec, d)
		}
	}
	return inc, dec
}

// NotFound wraps ErrNotFound for an image reference.
func NotFound(ref string) error {
	return fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

// Clone returns a deep copy (content and history are not shared).
func (img *Image) Clone() *Image {
	out := *img
	if img.Content != nil {
		c := img.Content.clone()
		out.Content = &c
	}
	out.History = nil
	for _, c := range img.History {
		out.History = append(out.History, c.clone())
	}
	return &out
}
