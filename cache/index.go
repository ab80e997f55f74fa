package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
)

// Pointer records what a mutable reference last resolved to.
type Pointer struct {
	Key        string        `json:"key"`
	Ref        string        `json:"ref"`
	Digest     digest.Digest `json:"digest"`
	Size       int64         `json:"size"`
	ResolvedAt time.Time     `json:"resolved_at"`
	Validator  string        `json:"validator,omitempty"`
	Source     string        `json:"source"`
	// UID is the depot image the name resolved to (seed 000's identity).
	UID string `json:"uid,omitempty"`
	// Upstream is what the last check against the source found: "" (not
	// checked since the pointer was written), "current", "changed" or
	// "gone"; CheckedAt says when.
	Upstream  string    `json:"upstream,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
}

// Fingerprint is the stat identity of a committed blob file. A blob whose
// fingerprint changed since it was verified is re-hashed before use.
type Fingerprint struct {
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	Inode uint64 `json:"inode"`
	Mode  uint32 `json:"mode"`
}

// BlobRecord describes a committed blob.
type BlobRecord struct {
	Digest     digest.Digest `json:"digest"`
	Size       int64         `json:"size"`
	BLAKE3     string        `json:"blake3"`
	Format     string        `json:"fmt"`
	VerifiedAt time.Time     `json:"verified_at"`
	LastUsed   time.Time     `json:"last_used"`
	Stat       Fingerprint   `json:"stat"`
	// Source names the origin it was fetched from (for messages).
	Source string `json:"source,omitempty"`
	// Ref is the reference it was fetched through, for repair.
	Ref string `json:"ref,omitempty"`
	// Quarantined is where the blob went when it failed verification; the
	// record stays until a repair fetches a good copy.
	Quarantined string `json:"quarantined,omitempty"`
}

func fingerprint(fi fs.FileInfo) Fingerprint {
	fp := Fingerprint{Size: fi.Size(), MTime: fi.ModTime().UnixNano(), Mode: uint32(fi.Mode())}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.Inode = st.Ino
	}
	return fp
}

func keyFile(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:]) + ".json"
}

func (c *Cache) pointerPath(key string) string {
	return filepath.Join(c.dir, "index", "pointers", keyFile(key))
}

func (c *Cache) recordPath(d digest.Digest) string {
	return filepath.Join(c.dir, "index", "blobs", d.Encoded()+".json")
}

// decodeRecord parses an index file strictly; a damaged file is
// ErrCorrupt, never a guess. It is fuzzed.
func decodeRecord[T any](data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("index entry: %v: %w", err, errdefs.ErrCorrupt)
	}
	return v, nil
}

func readJSON[T any](path string) (T, bool, error) {
	var zero T
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return zero, false, nil
	} else if err != nil {
		return zero, false, err
	}
	v, err := decodeRecord[T](data)
	if err != nil {
		return zero, false, fmt.Errorf("%s: %w", path, err)
	}
	return v, true, nil
}

// writeJSON replaces path atomically (optionally fsynced), mode 0600.
func writeJSON(path string, v any, durable bool) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600, durable)
}

func (c *Cache) pointers() ([]Pointer, error) {
	dir := filepath.Join(c.dir, "index", "pointers")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Pointer
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if p, ok, err := readJSON[Pointer](filepath.Join(dir, e.Name())); err == nil && ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// records lists the blob records, plus blobs without one (adopted by a full
// re-hash on their next check), in digest order.
func (c *Cache) records() ([]BlobRecord, error) {
	byDigest := map[digest.Digest]BlobRecord{}
	dir := filepath.Join(c.dir, "index", "blobs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if r, ok, err := readJSON[BlobRecord](filepath.Join(dir, e.Name())); err == nil && ok && r.Digest.Validate() == nil {
			byDigest[r.Digest] = r
		}
	}
	blobs, err := os.ReadDir(filepath.Join(c.dir, "blobs", "sha256"))
	if err != nil {
		return nil, err
	}
	for _, e := range blobs {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if _, ok := byDigest[d]; !ok && d.Validate() == nil {
			byDigest[d] = BlobRecord{Digest: d} // no record: the zero fingerprint forces a full re-hash
		}
	}
	out := make([]BlobRecord, 0, len(byDigest))
	for _, r := range byDigest {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// ownsPointer reports whether a depot pointer was resolved against the
// server this cache is configured with (keys carry the server URL).
func (c *Cache) ownsPointer(p Pointer) bool {
	return !strings.HasPrefix(p.Key, "depot:") || strings.HasPrefix(p.Key, "depot:"+c.server()+"/")
}
