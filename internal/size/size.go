// Package size reads the byte sizes that depot's flags and URL options take
// (--max-size, --scrub-rate, --rate, --max-content-size, S3's part-size= and
// upload-memory=), with one grammar for all of them. Units are binary, as
// docker/go-units' RAMInBytes reads them: K, M, G, T and P are powers of
// 1024, with or without a trailing B or iB and in any case, so 200G, 200GB,
// 200gb and 200GiB are all 200 × 2^30 bytes. It never guesses: a string
// that is not exactly a size is an error, never a prefix of one.
package size

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	units "github.com/docker/go-units"

	"github.com/depot-images/depot/errdefs"
)

// grammar is what Parse accepts: digits, an optional fraction, an optional
// space, and an optional unit: B, or K|M|G|T|P followed by nothing, B or iB.
// go-units alone would also take "1e3", "5." and ".5"; the grammar does not.
var grammar = regexp.MustCompile(`^(?i)([0-9]+)(\.[0-9]+)? ?(b|([kmgtp])(b|ib)?)?$`)

var multiplier = map[string]float64{"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

// Parse reads a size: a whole number of bytes ("1048576", "512B"), or a
// number, whole or with a fraction, and a binary unit ("200G", "200GB",
// "200gib", "1.5T"). A negative size, a fraction of a byte, a size over
// math.MaxInt64 bytes or anything else is an error that matches
// errdefs.ErrInvalidArgument and quotes s.
func Parse(s string) (int64, error) {
	m := grammar.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: want a number of bytes or a number with a binary unit, like 512M, 200G, 200GiB or 1.5T: %w", s, errdefs.ErrInvalidArgument)
	}
	unit := strings.ToLower(m[4])
	if unit == "" {
		if m[2] != "" {
			return 0, fmt.Errorf("%q: a fraction of a byte; give a whole number of bytes or a unit (K, M, G, T, P): %w", s, errdefs.ErrInvalidArgument)
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is too large: the largest size is %d bytes: %w", s, int64(math.MaxInt64), errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	// go-units converts through a float64 and wraps silently past
	// MaxInt64, so the bound is checked first, on the same float.
	num, err := strconv.ParseFloat(m[1]+m[2], 64)
	if err != nil || num*multiplier[unit] >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large: the largest size is %d bytes (8 EiB): %w", s, int64(math.MaxInt64), errdefs.ErrInvalidArgument)
	}
	n, err := units.RAMInBytes(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size: %w", s, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// Format writes n in the grammar Parse reads, exactly: with the largest
// binary unit that divides it ("200G", "16M"), else in bytes.
func Format(n int64) string {
	if n != 0 {
		for _, u := range []struct {
			suf   string
			shift uint
		}{{"P", 50}, {"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
			if n%(1<<u.shift) == 0 {
				return strconv.FormatInt(n>>u.shift, 10) + u.suf
			}
		}
	}
	return strconv.FormatInt(n, 10)
}

// Bytes is a size flag: a pflag.Value that reads with Parse, so a bad
// value fails flag parsing with the flag's name in the message.
type Bytes int64

// Set implements pflag.Value.
func (b *Bytes) Set(s string) error {
	n, err := Parse(s)
	if err != nil {
		return err
	}
	*b = Bytes(n)
	return nil
}

// String implements pflag.Value.
func (b *Bytes) String() string { return Format(int64(*b)) }

// Type implements pflag.Value.
func (b *Bytes) Type() string { return "size" }
