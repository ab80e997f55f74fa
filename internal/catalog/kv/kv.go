// Package kv is the catalog written once, over a small transactional
// key-value interface that a backend adapts: catalog/bolt over a bbolt
// file, catalog/etcd over etcd. It owns every rule of the catalog's
// records (the name index, reference counts, claims, tokens, secrets) and
// their layout: the keyspaces below and the JSON of catalog.Image,
// catalog.BlobRef and catalog.Token, which catalogtest.RunLayout pins.
//
// It must never hold state of its own or reach a store except through
// Store, and never read a record outside a transaction: a multi-key change
// happens inside one Update, or not at all.
package kv

import (
	"context"
)

// Space is one keyspace: a bbolt bucket, or the etcd key prefix
// <prefix><space>/.
type Space string

// The keyspaces and what their keys and values are.
const (
	Images  Space = "images"  // uid → JSON catalog.Image
	Names   Space = "names"   // name → uid
	Blobs   Space = "blobs"   // digest → JSON catalog.BlobRef
	Tokens  Space = "tokens"  // id → JSON catalog.Token
	Secrets Space = "secrets" // name → bytes
)

// Spaces lists every keyspace.
var Spaces = []Space{Images, Names, Blobs, Tokens, Secrets}

// Reader reads single keys inside a transaction or a view.
type Reader interface {
	// Get returns the value of key, or nil when there is none. The value is
	// valid until the transaction ends. (An etcd STM cannot tell an empty
	// value from a missing key, so nothing stores an empty value.)
	Get(space Space, key string) ([]byte, error)
}

// Tx is one serializable read-modify-write: a bbolt read-write Tx, or an
// etcd STM. It has no scan, because an STM can only detect conflicts on
// the keys it read one by one; every change reads what it depends on by
// key.
type Tx interface {
	Reader
	Put(space Space, key string, value []byte) error
	Delete(space Space, key string) error
}

// View is a consistent read-only snapshot: a bbolt read-only Tx, or etcd
// reads at one revision.
type View interface {
	Reader
	// Scan calls fn with the keys of space after after ("" for the first)
	// in byte order, at most limit of them (0 for all), and their values,
	// valid until fn returns. An error from fn stops the scan and is
	// returned.
	Scan(space Space, after string, limit int, fn func(key string, value []byte) error) error
}

// Store is what a backend adapts.
type Store interface {
	// Update runs fn as one atomic, serializable transaction. fn may run
	// more than once (a backend retries on contention), so it computes
	// only from what it reads. An error from fn aborts the transaction and
	// is returned unchanged.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn over one snapshot. An error from fn is returned
	// unchanged.
	View(ctx context.Context, fn func(View) error) error
}

// Catalog implements catalog.Images, Refs, Tokens and Secrets over a
// Store; a backend embeds it and adds Close.
type Catalog struct {
	s Store
}

// New returns the catalog over s.
func New(s Store) *Catalog { return &Catalog{s: s} }
