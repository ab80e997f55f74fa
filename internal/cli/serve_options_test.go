package cli

import (
	"errors"
	"os"
	"testing"
)

// TestHeadName: --head-name defaults to the hostname, and a name that
// could carry anything but a hostname's characters into the records (and
// from there to terminals) is a usage error.
func TestHeadName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	o := serveOptions{}
	if err := o.resolveHeadName(); err != nil || o.headName != host {
		t.Fatalf("default head name = %q, %v; want the hostname %q", o.headName, err, host)
	}
	for _, ok := range []string{"head1", "head23.cluster.local", "h_2-b"} {
		o := serveOptions{headName: ok}
		if err := o.resolveHeadName(); err != nil || o.headName != ok {
			t.Errorf("--head-name %q: %q, %v", ok, o.headName, err)
		}
	}
	long := make([]byte, 254)
	for i := range long {
		long[i] = 'a'
	}
	for _, bad := range []string{"head 1", "-head", ".head", "head\x1b[2J", "héad", "a/b", string(long)} {
		o := serveOptions{headName: bad}
		var ue usageError
		if err := o.resolveHeadName(); !errors.As(err, &ue) {
			t.Errorf("--head-name %q accepted: %v", bad, err)
		}
	}
}
