// Package chunks owns content-defined chunk boundaries and the chunk index
// format: the list of (length, BLAKE3-256) pairs that covers a blob exactly,
// kept beside the blob so that a node can fetch only the chunks it lacks as
// byte ranges of the ordinary blob URL.
//
// The boundaries come from FastCDC ("fastcdc-v1.0.0" of
// github.com/PlakarKorp/go-cdc-chunkers, a versioned name whose boundaries the
// module keeps stable) with min/avg/max 8/32/128 KiB by default; see the
// "Chunker choice (issue 14)" and "Chunk size" sections of BENCHMARKS.md for
// the measurements behind that choice and behind BLAKE3 as the per-chunk
// hash.
//
// Files:
//   - params.go: Params (algorithm and sizes) and the hard bounds;
//   - index.go: Index, Chunk, Extent and Validate;
//   - encode.go: the binary encoding, Encode and the hostile-input Decode;
//   - splitter.go: Splitter, a Write-based chunker for an ingest pipeline;
//   - build.go: Build, the io.Reader form, which also hashes the blob;
//   - seeds.go: Seeds, a bounded chunk-hash → seed-location lookup.
//
// What it must never do:
//   - trust an index it has not validated: Decode checks every bound before
//     it allocates, and every function that takes an *Index (Encode,
//     Seeds.Add) validates it again, so a hand-built Index is no back door;
//   - hold a blob in memory: the Splitter and Build keep at most one chunk
//     window (Params.Max bytes plus one buffer) of the blob, and an Index
//     holds 36 bytes per chunk;
//   - decide what a chunk is worth: it does no I/O beyond its reader, plans
//     no transfer and trusts no seed byte; callers re-hash every chunk they
//     copy or fetch against Chunk.Hash.
package chunks
