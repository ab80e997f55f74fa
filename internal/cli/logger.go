package cli

import (
	"fmt"
	"log/slog"
	"os"
)

// newLogger is the logger of --log-level at level, in format text or json,
// on w (stderr: stdout is the command's output).
func newLogger(w *os.File, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: %v", level, err)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
