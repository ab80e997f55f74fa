// Package cache is depot's node-side image cache, whose identity is the
// content digest. It is the public Go API for nodes: Open a cache
// directory, then (*Cache).Ensure(ctx, ref, opts) returns a local,
// read-only file that is exactly the content asked for, or a typed error
// (errdefs) naming what was wanted and what is available.
//
// It owns the cache directory and everything in it:
//
//	blobs/sha256/<hex>        committed, read-only, verified blobs
//	ingest/<hex>.part         resumable partial download of <hex>
//	ingest/<hex>.json         its source validator (ETag) and in-order prefix
//	locks/<hex>.lock          flock per digest: its transfer, deletion and record updates
//	leases/<h>.json           who uses which digest (lease.go); unreadable: nothing is deleted
//	index/pointers/<h>.json   pointer key → digest, resolved_at (h = sha256(key))
//	index/blobs/<hex>.json    size, BLAKE3, format, verified_at, last_used, stat fingerprint
//	index/chunks/<hex>        the blob's chunk index (chunkindex.go): a seeding hint, never trusted
//	ingest/<hex>.cix          the chunk index a delta transfer of <hex> follows
//	quarantine/<hex>.<time>   a blob that failed verification, kept for forensics
//	work/<uid>/               edit workspaces (package workspace; the cache only looks)
//
// and the maintenance of it: Verify, CheckSources, Prune, Remove, leases
// and Adopt.
//
// What it must never do:
//   - return a path whose content has not been verified against its
//     digest: a pointer (name, UID, URL, tag) is only ever used to learn a
//     digest, never in place of a content check, and a blob whose stat
//     fingerprint changed is re-hashed before use (Adopt alone takes the
//     digest its caller computed from the bytes);
//   - modify a committed blob: blobs appear only by rename after
//     verification, and a corrupt one is moved to quarantine/, not fixed;
//   - make visible content that names host files (a qcow2 backing file
//     outside blobs/, an external data file): ErrUnsafeContent;
//   - trust a size a source declares: it is checked against
//     Options.MaxDownloadSize and the free space of the cache before any
//     of the body is read (claim.go), and a body of unknown size is cut at
//     that bound while it streams;
//   - retry what retrying cannot fix (retry.go): only an interrupted
//     transfer is resumed, by Range, at most four times in all;
//   - delete a leased blob (Prune, and Remove without Force), or in Prune
//     an entry of this server bound to an edit workspace, and delete
//     anything at all when a lease cannot be read.
//
// Many processes share one cache: index files are replaced by atomic
// rename, and a per-digest flock makes concurrent callers wait for one
// transfer instead of repeating it. The same lock covers every deletion of
// the digest and every rewrite of its record (locks.go), so a lookup never
// returns a path being deleted.
//
// Files, by concept: cache.go (Open, options, sources), ensure.go (pull
// policy and pointers), integrity.go (lookup, re-verification,
// quarantine), fetch.go and retry.go (one transfer per digest, and its
// retry policy), partial.go (the part file: resume, reset, commit),
// download.go (sequential and parallel transfers), delta.go (delta
// transfers from seeds and their bounded lookup, PlanPull), chunkindex.go
// (every blob's chunk index), claim.go (size bounds),
// chain.go (qcow2 backing chains), index.go, lease.go, locks.go, and the
// maintenance in verify.go, sources.go, prune.go, remove.go, list.go and
// adopt.go.
package cache
