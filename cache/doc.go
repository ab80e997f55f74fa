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
