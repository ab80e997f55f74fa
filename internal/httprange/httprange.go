// Package httprange renders and reads the HTTP range headers depot's
// downloads use: the Range of a request and the total of a Content-Range.
// Both the REST client and the HTTP source use it. It holds no transport
// and must never do I/O.
package httprange

import (
	"strconv"
	"strings"
)

// Header renders a Range header value for length bytes from offset (-1 for
// the rest); "" asks for the whole content.
func Header(offset, length int64) string {
	switch {
	case length >= 0:
		return "bytes=" + strconv.FormatInt(offset, 10) + "-" + strconv.FormatInt(offset+length-1, 10)
	case offset > 0:
		return "bytes=" + strconv.FormatInt(offset, 10) + "-"
	}
	return ""
}

// Total reads the total of a Content-Range "bytes a-b/total" (-1 if absent
// or unknown).
func Total(contentRange string) int64 {
	i := strings.LastIndexByte(contentRange, '/')
	if i < 0 {
		return -1
	}
	n, err := strconv.ParseInt(contentRange[i+1:], 10, 64)
	if err != nil {
		return -1
	}
	return n
}
