package cli

import (
	"fmt"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/size"
)

// budgetValue is a size limit whose zero means "no limit" to the code that
// takes it (--max-size, --max-download-size). 0 is refused: an operator who
// writes 0 means either no limit or nothing at all, and which one is not for
// depot to guess. No limit is the flag left out.
type budgetValue struct {
	n    size.Bytes
	flag string // for the hint
}

func (b *budgetValue) Set(s string) error {
	var n size.Bytes
	if err := n.Set(s); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("0 is not a limit: leave --%s out for none, or give a size like 200G: %w", b.flag, errdefs.ErrInvalidArgument)
	}
	b.n = n
	return nil
}

func (b *budgetValue) String() string {
	if b.n == 0 {
		return ""
	}
	return size.Format(int64(b.n))
}

func (b *budgetValue) Type() string { return "size" }
