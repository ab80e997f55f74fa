package cache

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// transfer's workers, readers and hashers are all joined before Ensure
// returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
