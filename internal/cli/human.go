package cli

import (
	"fmt"
	"time"

	"github.com/depot-images/depot/api"
)

func fmtTime(f float64) string {
	if f == 0 {
		return "-"
	}
	return api.FromUnixFloat(f).Local().Format(time.DateTime)
}

func shortDigest(s string) string {
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
