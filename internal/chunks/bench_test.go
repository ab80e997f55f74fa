//go:build linux

package chunks

// The evaluation behind the chunker choice (BENCHMARKS.md, "Chunker choice
// (issue 14)"). Run it with
//
//	go test -run '^$' -bench . -benchtime 5x -count 5 ./internal/chunks/
//
// Throughput is reported twice: MB/s of wall time (b.SetBytes) and cpu-MB/s,
// bytes per second of the benchmark thread's own CPU time, which other load
// on the machine does not distort. BenchmarkReuse prints a table of reuse on
// synthetic image pairs.
//
// github.com/restic/chunker and github.com/jotfs/fastcdc-go are imported by
// this file only, to compare; they are not linked into depot.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	cdc "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/jc"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/ultracdc"
	jotfs "github.com/jotfs/fastcdc-go"
	"github.com/opencontainers/go-digest"
	restic "github.com/restic/chunker"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// candidate cuts data into chunks and calls emit with each.
type candidate struct {
	name string
	cut  func(data []byte, emit func([]byte))
}

func plakarCandidate(alg string) candidate {
	p := DefaultParams
	return candidate{alg + " (go-cdc-chunkers)", func(data []byte, emit func([]byte)) {
		c, err := cdc.NewChunker(alg, bytes.NewReader(data), &cdc.ChunkerOpts{MinSize: int(p.Min), NormalSize: int(p.Avg), MaxSize: int(p.Max)})
		if err != nil {
			panic(err)
		}
		for {
			chunk, err := c.Next()
			if len(chunk) > 0 {
				emit(chunk)
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				panic(err)
			}
		}
	}}
}

// resticPol is a fixed irreducible polynomial (restic's own test one); depot
// would have had to pin one.
const resticPol = restic.Pol(0x3DA3358B4DC173)

func resticCandidate(bits int) candidate {
	return candidate{fmt.Sprintf("rabin 2^%d (restic/chunker)", bits), func(data []byte, emit func([]byte)) {
		c := restic.NewWithBoundaries(bytes.NewReader(data), resticPol, 16<<10, 256<<10)
		c.SetAverageBits(bits)
		buf := make([]byte, 256<<10)
		for {
			chunk, err := c.Next(buf)
			if err == io.EOF {
				return
			}
			if err != nil {
				panic(err)
			}
			emit(chunk.Data)
		}
	}}
}

var jotfsCandidate = candidate{"fastcdc (jotfs/fastcdc-go)", func(data []byte, emit func([]byte)) {
	c, err := jotfs.NewChunker(bytes.NewReader(data), jotfs.Options{MinSize: 16 << 10, AverageSize: 64 << 10, MaxSize: 256 << 10})
	if err != nil {
		panic(err)
	}
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			panic(err)
		}
		emit(chunk.Data)
	}
}}

func candidates() []candidate {
	return []candidate{
		plakarCandidate(cdcAlgorithm), // the choice
		plakarCandidate("ultracdc-v1.0.0"),
		plakarCandidate("jc-v1.1.0"),
		resticCandidate(15), // restic can only aim at powers of two past min:
		resticCandidate(16), // 16+32 or 16+64 KiB
		jotfsCandidate,
	}
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs f b.N times over n bytes and reports cpu-MB/s besides the
// wall-clock MB/s.
func measure(b *testing.B, n int, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.SetBytes(int64(n))
	b.ResetTimer()
	start := threadCPU()
	for range b.N {
		f()
	}
	cpu := threadCPU() - start
	b.ReportMetric(float64(n)*float64(b.N)/cpu.Seconds()/1e6, "cpu-MB/s")
}

// BenchmarkChunkers: boundaries only, one core, 64 MiB of random bytes.
func BenchmarkChunkers(b *testing.B) {
	data := randomBytes(20, 64<<20)
	for _, c := range candidates() {
		b.Run(c.name, func(b *testing.B) { measure(b, len(data), func() { c.cut(data, func([]byte) {}) }) })
	}
}

// BenchmarkChunkHash: the per-chunk hash over 64 KiB chunks.
func BenchmarkChunkHash(b *testing.B) {
	data := randomBytes(21, 64<<20)
	hashes := map[string]func([]byte){
		"sha256": func(p []byte) { sha256.Sum256(p) },
		"blake3": func(p []byte) { blake3.Sum256(p) },
	}
	for _, name := range []string{"sha256", "blake3"} {
		b.Run(name, func(b *testing.B) {
			measure(b, len(data), func() {
				for off := 0; off < len(data); off += 64 << 10 {
					hashes[name](data[off : off+64<<10])
				}
			})
		})
	}
}

// BenchmarkSplitter: what the ingest pass will pay, boundaries and BLAKE3
// per chunk, fed in 1 MiB writes.
func BenchmarkSplitter(b *testing.B) {
	data := randomBytes(22, 64<<20)
	measure(b, len(data), func() {
		s, err := NewSplitter(DefaultParams, nil)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += 1 << 20 {
			s.Write(data[off : off+1<<20])
		}
		if _, err := s.Finish(digest.FromString("not checked here")); err != nil {
			b.Fatal(err)
		}
	})
}

const pairSize = 256 << 20

// pair makes a v1 and a v2 of one scenario from a seed.
type pair struct {
	name string
	make func(seed uint64) (v1, v2 []byte)
}

var pairs = []pair{
	{"(a) 1% rewritten as 64 extents", func(seed uint64) ([]byte, []byte) {
		r := rand.NewChaCha8([32]byte{1, byte(seed)})
		v1 := make([]byte, pairSize)
		r.Read(v1)
		v2 := slices.Clone(v1)
		ext := pairSize / 100 / 64
		p := rand.New(rand.NewPCG(seed, 1))
		for range 64 {
			off := p.IntN(pairSize - ext)
			r.Read(v2[off : off+ext])
		}
		return v1, v2
	}},
	{"(b) 0.1% of 4 KiB blocks rewritten", func(seed uint64) ([]byte, []byte) {
		r := rand.NewChaCha8([32]byte{2, byte(seed)})
		v1 := make([]byte, pairSize)
		r.Read(v1)
		v2 := slices.Clone(v1)
		blocks := pairSize / 4096
		p := rand.New(rand.NewPCG(seed, 2))
		for range blocks / 1000 {
			blk := p.IntN(blocks)
			r.Read(v2[blk*4096 : (blk+1)*4096])
		}
		return v1, v2
	}},
	{"(c) 1 MiB inserted mid-tar", func(seed uint64) ([]byte, []byte) {
		r := rand.NewChaCha8([32]byte{3, byte(seed)})
		p := rand.New(rand.NewPCG(seed, 3))
		v1 := make([]byte, 0, pairSize+(2<<20))
		for len(v1) < pairSize { // 512-byte headers, files up to 2 MiB, zero padding
			hdr := make([]byte, 512)
			size := p.IntN(2 << 20)
			copy(hdr, fmt.Sprintf("usr/share/depot/file%09d\x00", len(v1)))
			copy(hdr[124:], fmt.Sprintf("%011o", size))
			body := make([]byte, size+(512-size%512)%512)
			r.Read(body[:size])
			v1 = append(append(v1, hdr...), body...)
		}
		v1 = v1[:pairSize]
		ins := make([]byte, 1<<20)
		r.Read(ins)
		v2 := slices.Concat(v1[:pairSize/2], ins, v1[pairSize/2:])
		return v1, v2
	}},
}

// BenchmarkReuse prints, for every pair and candidate, the median over three
// seeds of: reuse (v2's bytes found as chunks of v1, by hash), moved (v2's
// distinct missing chunks plus its index at 36 bytes a chunk, as a share of
// v2), and the mean chunk size. Run it with -benchtime 1x.
func BenchmarkReuse(b *testing.B) {
	cands := candidates()
	type result struct{ reuse, moved, mean []float64 }
	res := map[string]*result{}
	for range b.N {
		for _, pr := range pairs {
			for seed := range uint64(3) {
				v1, v2 := pr.make(seed)
				for _, c := range cands {
					have := map[Hash]bool{}
					c.cut(v1, func(p []byte) { have[HashOf(p)] = true })
					var reused, missing, n int
					fetched := map[Hash]bool{}
					c.cut(v2, func(p []byte) {
						n++
						h := HashOf(p)
						switch {
						case have[h]:
							reused += len(p)
						case !fetched[h]:
							fetched[h] = true
							missing += len(p)
						}
					})
					key := pr.name + "\x00" + c.name
					if res[key] == nil {
						res[key] = &result{}
					}
					r := res[key]
					r.reuse = append(r.reuse, 100*float64(reused)/float64(len(v2)))
					r.moved = append(r.moved, 100*float64(missing+n*entrySize)/float64(len(v2)))
					r.mean = append(r.mean, float64(len(v2))/float64(n)/1024)
				}
			}
		}
	}
	median := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	fmt.Printf("\n| pair (256 MiB) | chunker | mean chunk | reuse | moved (incl. index) |\n| --- | --- | --- | --- | --- |\n")
	for _, pr := range pairs {
		for _, c := range cands {
			r := res[pr.name+"\x00"+c.name]
			fmt.Printf("| %s | %s | %.1f KiB | %.2f %% | %.2f %% |\n", pr.name, c.name, median(r.mean), median(r.reuse), median(r.moved))
		}
	}
	zeros := make([]byte, 64<<20)
	fmt.Printf("\n| 64 MiB of zeros | chunks | index bytes |\n| --- | --- | --- |\n")
	for _, c := range cands {
		n := 0
		c.cut(zeros, func([]byte) { n++ })
		fmt.Printf("| %s | %d | %d |\n", c.name, n, n*entrySize)
	}
}
