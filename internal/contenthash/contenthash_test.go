package contenthash

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"

	"github.com/depot-images/depot/errdefs"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestValidate(t *testing.T) {
	if err := Validate("sha256:" + hex64); err != nil {
		t.Fatalf("Validate(sha256:<hex64>) = %v", err)
	}
	for _, d := range []digest.Digest{
		"", "sha256", "sha256:", hex64, digest.Digest("sha256:" + hex64[:63]), "sha256:" + hex64 + "0",
		"sha256:" + digest.Digest(strings.ToUpper(hex64)), "sha256:../../etc/passwd",
		"sha512:" + hex64 + hex64, "md5:d41d8cd98f00b204e9800998ecf8427e", "SHA256:" + hex64,
	} {
		if err := Validate(d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Validate(%q) = %v, want ErrInvalidArgument", d, err)
		}
	}
}

// TestDualHasher: both sums match the reference implementations, for writes
// hashed inline (< 64 KiB) and handed to the second goroutine alike.
func TestDualHasher(t *testing.T) {
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	h := NewDualHasher()
	defer h.Close()
	for off, n := 0, 1; off < len(data); off, n = off+n, n*3 {
		end := min(off+n, len(data))
		h.Write(data[off:end])
	}
	s := sha256.Sum256(data)
	b := blake3.Sum256(data)
	wantD := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(s[:]))
	sum, err := h.Check(int64(len(data)), "", wantD)
	if err != nil {
		t.Fatal(err)
	}
	if sum != (Sum{Digest: wantD, Size: int64(len(data)), BLAKE3: hex.EncodeToString(b[:])}) {
		t.Fatalf("Check = %+v", sum)
	}
	var ve *errdefs.VerificationError
	if _, err := h.Check(int64(len(data))+1, wantD); !errors.As(err, &ve) || ve.WantSize != int64(len(data))+1 || ve.Want != wantD {
		t.Fatalf("size mismatch: %v", err)
	}
	other := digest.Digest("sha256:" + hex64)
	if _, err := h.Check(-1, wantD, other); !errors.As(err, &ve) || ve.Want != other || ve.Got != wantD {
		t.Fatalf("digest mismatch: %v", err)
	}
	h.Close() // twice is fine
}
