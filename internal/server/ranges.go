package server

import (
	"net/http"
	"strconv"
	"strings"
)

// maxRanges is how many ranges one request may ask for (nginx's
// max_ranges idea). A request for more, or for ranges that overlap, is
// answered with the whole content: http.ServeContent would send a
// multipart answer with a part header per range, so that a few hundred
// bytes of request could ask for many times the content's size.
const maxRanges = 8

// rangeVerdict says what to do with a Range header before
// http.ServeContent sees it.
type rangeVerdict int

const (
	rangeServe         rangeVerdict = iota // let ServeContent handle it
	rangeWhole                             // drop the header: send the whole content
	rangeUnsatisfiable                     // answer 416
)

// checkRanges judges a Range header against a content of size bytes. It
// leaves to http.ServeContent what it handles well (one range, a few
// disjoint ones, malformed headers, If-Range). It takes over:
//   - a suffix range of zero bytes ("bytes=-0"), which selects nothing:
//     416 (ServeContent would answer 206 with an impossible Content-Range);
//   - more than maxRanges ranges, or ranges that overlap: the whole content.
func checkRanges(h string, size int64) rangeVerdict {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || h == "" {
		return rangeServe
	}
	type span struct{ start, end int64 } // [start, end)
	var spans []span
	parts := strings.Split(spec, ",")
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		first, last, ok := strings.Cut(p, "-")
		if !ok {
			return rangeServe // malformed: ServeContent answers it
		}
		first, last = strings.TrimSpace(first), strings.TrimSpace(last)
		var s span
		if first == "" {
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil || n < 0 {
				return rangeServe
			}
			if n == 0 {
				return rangeUnsatisfiable
			}
			s = span{max(size-n, 0), size}
		} else {
			a, err := strconv.ParseInt(first, 10, 64)
			if err != nil || a < 0 {
				return rangeServe
			}
			s = span{a, size}
			if last != "" {
				b, err := strconv.ParseInt(last, 10, 64)
				if err != nil || b < a {
					return rangeServe
				}
				s.end = min(b+1, size)
			}
			if a >= size {
				continue // unsatisfiable on its own; ServeContent skips it
			}
		}
		spans = append(spans, s)
	}
	if len(parts) > maxRanges {
		return rangeWhole
	}
	for i := range spans {
		for j := range i {
			if spans[i].start < spans[j].end && spans[j].start < spans[i].end {
				return rangeWhole
			}
		}
	}
	return rangeServe
}

// applyRanges enforces checkRanges on r before http.ServeContent: it
// returns the request to serve (without its Range header when the whole
// content is to be sent), or nil when it has answered the request itself.
func applyRanges(w http.ResponseWriter, r *http.Request, size int64) *http.Request {
	h := r.Header.Get("Range")
	if h == "" {
		return r
	}
	switch checkRanges(h, size) {
	case rangeUnsatisfiable:
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		http.Error(w, "416 requested range not satisfiable: a suffix range of zero bytes selects nothing", http.StatusRequestedRangeNotSatisfiable)
		return nil
	case rangeWhole:
		r = r.WithContext(r.Context())
		r.Header = r.Header.Clone()
		r.Header.Del("Range")
	}
	return r
}
