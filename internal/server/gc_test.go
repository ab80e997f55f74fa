package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/bolt"
	"github.com/depot-images/depot/internal/catalog/etcd"
	"github.com/depot-images/depot/internal/testenv"
)

// etcdCatalog opens a catalog under a fresh prefix of a real etcd.
func etcdCatalog(t *testing.T, ep string) (*etcd.Catalog, string) {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	prefix := "/depot-gc-" + hex.EncodeToString(b) + "/"
	c, err := etcd.Open(ctx, []string{ep}, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, prefix
}

// TestGCKeepsBlobsWithDamagedRecords damages the reference record of a blob
// two images share, in a real bbolt file and in a real etcd. Deleting one
// of the images must not rewrite the record as zero references, and GC
// must keep the blob, report the damage, and still collect the rest.
func TestGCKeepsBlobsWithDamagedRecords(t *testing.T) {
	backends := map[string]func(t *testing.T, e **env) (catalog.Catalog, func(d digest.Digest)){
		"bolt": func(t *testing.T, e **env) (catalog.Catalog, func(digest.Digest)) {
			path := filepath.Join(t.TempDir(), "refs.db")
			cat, err := bolt.Open(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return cat, func(d digest.Digest) {
				// bbolt locks its file: close the catalog, write garbage
				// into the record with bbolt itself, open it again.
				(*e).srv.cfg.Catalog.Close()
				db, err := bbolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("blobs")).Put([]byte(d), []byte("\x00garbage{")) }); err != nil {
					t.Fatal(err)
				}
				db.Close()
				cat, err := bolt.Open(path, time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cat.Close() })
				(*e).srv.cfg.Catalog = cat
			}
		},
		"etcd": func(t *testing.T, _ **env) (catalog.Catalog, func(digest.Digest)) {
			cat, prefix := etcdCatalog(t, testenv.Etcd(t))
			return cat, func(d digest.Digest) {
				if _, err := cat.Client().Put(ctx, prefix+"blobs/"+d.String(), "\x00garbage{"); err != nil {
					t.Fatal(err)
				}
			}
		},
	}
	for name, backend := range backends {
		t.Run(name, func(t *testing.T) {
			var e *env
			cat, damage := backend(t, &e)
			// The images and references live in cat; tokens stay in the
			// env's own bbolt catalog.
			e = newEnv(t, func(c *Config) { c.Catalog = cat; c.GCGrace = -time.Second })
			shared, other := randData(t, 4096), randData(t, 4096)
			for _, name := range []string{"a", "b", "x"} {
				if _, err := e.writer.CreateImage(ctx, api.CreateImageRequest{Name: name}); err != nil {
					t.Fatal(err)
				}
			}
			for name, data := range map[string][]byte{"a": shared, "b": shared, "x": other} {
				if _, err := e.writer.PushContent(ctx, name, bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.admin.DeleteImage(ctx, "x"); err != nil {
				t.Fatal(err)
			}
			d := digest.FromBytes(shared)
			damage(d)

			if err := e.admin.DeleteImage(ctx, "b"); err == nil {
				t.Error("deleting an image whose blob record is damaged succeeded (the count was guessed)")
			}
			res, err := e.srv.CollectGarbage(ctx)
			if !errors.Is(err, errdefs.ErrCorrupt) || !strings.Contains(err.Error(), d.String()) {
				t.Errorf("GC over a damaged record: %v; want ErrCorrupt naming %s", err, d)
			}
			if _, err := e.blobs.Stat(ctx, d); err != nil {
				t.Fatalf("GC deleted a blob whose references it could not read: %v", err)
			}
			if res.Deleted != 1 {
				t.Errorf("GC deleted %d blobs, want 1 (the unreferenced one; damage elsewhere must not stop collection)", res.Deleted)
			}
			if got := readAll(t, e.reader, "a"); !bytes.Equal(got, shared) {
				t.Error("image a lost its content")
			}
		})
	}
}

// walkGate is the real catalog with a counter on Ref, which GC's walk calls
// once per blob: it pauses the walk at the at-th blob until resume closes.
type walkGate struct {
	catalog.Catalog
	at     int64
	n      atomic.Int64
	paused chan struct{}
	resume chan struct{}
}

func (g *walkGate) Ref(c context.Context, d digest.Digest) (catalog.BlobRef, error) {
	if g.n.Add(1) == g.at {
		close(g.paused)
		<-g.resume
	}
	return g.Catalog.Ref(c, d)
}

// TestCommitsLandWhileGCWalks: GC walks 10,000 blobs on a real etcd, one
// catalog round trip each. Halfway through the walk, an upload must commit
// and be referenced without waiting for the walk to end.
func TestCommitsLandWhileGCWalks(t *testing.T) {
	const blobs = 10000
	cat, prefix := etcdCatalog(t, testenv.Etcd(t))
	gate := &walkGate{Catalog: cat, at: blobs / 2, paused: make(chan struct{}), resume: make(chan struct{})}
	e := newEnv(t, func(c *Config) { c.Catalog = gate; c.GCGrace = time.Hour })

	// Tiny blobs, each with a record in its grace period, written in
	// batches straight to etcd (the key layout of catalog/etcd).
	dir := filepath.Join(e.dir, "blobs", "sha256")
	now := time.Now().UTC()
	var ops []clientv3.Op
	for i := range blobs {
		data := []byte("blob " + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + " " + hex.EncodeToString([]byte{byte(i >> 8), byte(i)}))
		d := digest.FromBytes(data)
		if err := os.WriteFile(filepath.Join(dir, d.Encoded()), data, 0o444); err != nil {
			t.Fatal(err)
		}
		rec, _ := json.Marshal(catalog.BlobRef{Digest: d, ZeroSince: now})
		ops = append(ops, clientv3.OpPut(prefix+"blobs/"+d.String(), string(rec)))
		if len(ops) == 100 || i == blobs-1 {
			if _, err := cat.Client().Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	if _, err := e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "live"}); err != nil {
		t.Fatal(err)
	}

	type gcOut struct {
		res GCResult
		err error
	}
	gcDone := make(chan gcOut, 1)
	go func() {
		res, err := e.srv.CollectGarbage(ctx)
		gcDone <- gcOut{res, err}
	}()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			close(gate.resume)
		}
	}
	var out *gcOut
	wait := func() gcOut {
		resume()
		if out == nil {
			o := <-gcDone
			out = &o
		}
		return *out
	}
	defer wait() // the pass ends before the catalog closes
	select {
	case <-gate.paused:
	case o := <-gcDone:
		out = &o
		t.Fatalf("GC ended before its walk reached blob %d: %+v %v", gate.at, o.res, o.err)
	}

	data := randData(t, 64<<10)
	pushDone := make(chan error, 1)
	go func() {
		_, err := e.writer.PushContent(ctx, "live", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
		pushDone <- err
	}()
	select {
	case err := <-pushDone:
		if err != nil {
			t.Fatalf("upload during the GC walk: %v", err)
		}
	case <-time.After(30 * time.Second):
		wait()
		<-pushDone
		t.Fatalf("an upload waited 30 s for a GC walk at blob %d of %d to end", gate.at, blobs)
	}
	select {
	case o := <-gcDone:
		out = &o
		t.Fatalf("the GC pass ended while its walk was paused: %+v %v", o.res, o.err)
	default:
	}
	if got := readAll(t, e.reader, "live"); !bytes.Equal(got, data) {
		t.Fatal("the upload during the walk is not the content")
	}
	res := wait()
	if res.err != nil {
		t.Fatal(res.err)
	}
	if walked := gate.n.Load(); walked < blobs {
		t.Errorf("the walk looked up %d blobs, want %d", walked, blobs)
	}
	if res.res.Deleted != 0 {
		t.Errorf("GC deleted %d blobs in their grace period", res.res.Deleted)
	}
}
