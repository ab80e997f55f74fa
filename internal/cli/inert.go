package cli

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// inert makes text from data (image names and descriptions, token
// subjects, revision messages, a server's or a source's error messages) safe
// to print to a terminal: every C0 and C1 control character, DEL, Unicode
// bidirectional-override and line/paragraph separator, and every byte that
// is not UTF-8 is written as a Go escape (\x1b, \r, \u009b, \u202e, \xff), so
// no escape sequence from data reaches the terminal and no data can start a
// line of its own. Other Unicode and backslashes are kept as they are. Human
// output passes every data field through inert; --json output is exact.
func inert(s string) string {
	if strings.IndexFunc(s, live) < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case live(r):
			b.WriteString(escapeRune(r))
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

// live reports whether r acts on a terminal instead of being shown.
func live(r rune) bool {
	return unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029'
}

func escapeRune(r rune) string {
	switch r {
	case '\a':
		return `\a`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\v':
		return `\v`
	}
	if r < 0x80 {
		return fmt.Sprintf(`\x%02x`, r)
	}
	return fmt.Sprintf(`\u%04x`, r)
}
