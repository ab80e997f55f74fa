package size

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/depot-images/depot/errdefs"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"1000", 1000},
		{"512B", 512},
		{"512b", 512},
		{"200G", 200 << 30},
		{"200GB", 200 << 30},
		{"200gb", 200 << 30},
		{"200GiB", 200 << 30},
		{"200gib", 200 << 30},
		{"200 GiB", 200 << 30},
		{"5mb", 5 << 20},
		{"10gib", 10 << 30},
		{"16MiB", 16 << 20},
		{"1k", 1 << 10},
		{"1.5T", 3 << 39},
		{"2P", 2 << 50},
		{"8191P", 8191 << 50},
		{"9223372036854775807", math.MaxInt64},
	} {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", " ", "G", "-1", "-5G", "+5G", "5xyz", "5 xyz", "5Gi", "5iB", "5GBB", "5bb", "5KiBB", "5E", "5EB",
		"10000000000T", "8P0", "8192P", "9223372036854775808", "99999999999999999999", "1e3", "1e3G", "0x10",
		".5G", "5.G", "0.5", "1.5", "1.5B", "5 G ", " 5G", "5  G", "NaN", "Inf", "5G\n", "٣G",
	} {
		if n, err := Parse(bad); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("Parse(%q) = %d, %v; want ErrInvalidArgument quoting the input", bad, n, err)
		}
	}
}

func TestFormatRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 1, 1023, 1024, 200 << 20, 200 << 30, 3 << 39, 1<<40 + 1, 8191 << 50, math.MaxInt64} {
		got, err := Parse(Format(n))
		if err != nil || got != n {
			t.Errorf("Parse(Format(%d) = %q) = %d, %v", n, Format(n), got, err)
		}
	}
	if s := Format(200 << 20); s != "200M" {
		t.Errorf("Format(200 MiB) = %q", s)
	}
}

// TestFlagNamesItself: a bad value fails pflag's parsing with the flag's
// name in the message.
func TestFlagNamesItself(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	b := Bytes(200 << 20)
	fs.Var(&b, "scrub-rate", "bytes per second")
	if err := fs.Parse([]string{"--scrub-rate", "200gb"}); err != nil || b != 200<<30 {
		t.Fatalf("--scrub-rate 200gb: %d %v", b, err)
	}
	err := fs.Parse([]string{"--scrub-rate", "5xyz"})
	if err == nil || !strings.Contains(err.Error(), "--scrub-rate") || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("--scrub-rate 5xyz: %v", err)
	}
	if fs.Lookup("scrub-rate").DefValue != "200M" {
		t.Errorf("default shown as %q", fs.Lookup("scrub-rate").DefValue)
	}
}
