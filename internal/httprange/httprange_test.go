package httprange

import "testing"

func TestHeader(t *testing.T) {
	for _, c := range []struct {
		off, n int64
		want   string
	}{
		{0, -1, ""}, {10, -1, "bytes=10-"}, {0, 10, "bytes=0-9"}, {5, 1, "bytes=5-5"},
	} {
		if got := Header(c.off, c.n); got != c.want {
			t.Errorf("Header(%d, %d) = %q, want %q", c.off, c.n, got, c.want)
		}
	}
}

func TestTotal(t *testing.T) {
	for in, want := range map[string]int64{
		"bytes 0-9/100": 100, "bytes 0-9/*": -1, "": -1, "bytes 5-5/6": 6, "bytes 0-0/x": -1,
	} {
		if got := Total(in); got != want {
			t.Errorf("Total(%q) = %d, want %d", in, got, want)
		}
	}
}
