package names

import (
	"errors"
	"strings"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

func TestIsUID(t *testing.T) {
	if !IsUID("d16d9eb8786c408ba32780ee6b722a50") {
		t.Error("a 32-hex UID is not one")
	}
	for _, s := range []string{"", "d16d9eb8786c408ba32780ee6b722a5", "d16d9eb8786c408ba32780ee6b722a500", "D16D9EB8786C408BA32780EE6B722A50", "g16d9eb8786c408ba32780ee6b722a50"} {
		if IsUID(s) {
			t.Errorf("IsUID(%q) = true", s)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, n := range []string{"a", "NewImage", "ubuntu-24.04+lts_2", strings.Repeat("x", 128), "d16d9eb8786c408ba32780ee6b722a5"} {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", ".hidden", "-x", "a/b", "../etc", "a b", "a\x1b", "é", strings.Repeat("x", 129), "d16d9eb8786c408ba32780ee6b722a50"} {
		if err := ValidateName(n); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidArgument", n, err)
		}
	}
}
