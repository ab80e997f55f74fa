package server

import (
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/depot-images/depot/api"
)

// respWriter records the status and byte count of a response. It forwards
// ReadFrom so that content still goes out with sendfile.
type respWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	// body is the request's body, if it has one: a response that starts
	// while it is unread closes the connection.
	body *reqBody
}

// startHeader runs once, before the header goes out.
func (w *respWriter) startHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.status, w.wroteHeader = code, true
	if w.body.pending() {
		// Answering before the body was read (a refusal): close the
		// connection rather than wait for, or read, what the client
		// still sends.
		w.Header().Set("Connection", "close")
	}
}

func (w *respWriter) WriteHeader(code int) {
	w.startHeader(code)
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(p []byte) (int, error) {
	w.startHeader(http.StatusOK)
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *respWriter) ReadFrom(r io.Reader) (int64, error) {
	w.startHeader(http.StatusOK)
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		w.bytes += n
		return n, err
	}
	n, err := io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	w.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) ok(w http.ResponseWriter, status int, data any) {
	s.okNext(w, status, data, "")
}

func (s *Server) okNext(w http.ResponseWriter, status int, data any, next string) {
	raw, err := json.Marshal(data)
	if err != nil {
		http.Error(w, `{"success":false,"error":"internal: encoding response"}`, http.StatusInternalServerError)
		return
	}
	writeEnvelope(w, status, api.Envelope{Success: true, Data: raw, Next: next})
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, env := api.ErrorEnvelope(err)
	// The log gets the whole error; the client a bounded one without the
	// server's paths.
	path := quoteInput(r.URL.Path)
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", path, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", path, "status", status, slog.String("err", err.Error()))
	}
	env.Error = s.publicMessage(err)
	if r.Method == http.MethodHead {
		w.Header().Set("X-Depot-Error", env.Error)
	}
	writeEnvelope(w, status, env)
}

func writeEnvelope(w http.ResponseWriter, status int, env api.Envelope) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(env)
}

// Bounds on what an error message echoes back.
const (
	maxEchoed  = 64   // bytes of one quoted input in a message
	maxMessage = 1024 // bytes of a whole message
)

// quoteInput quotes s (control characters escaped) for a message, cut to
// maxEchoed bytes with its full length noted.
func quoteInput(s string) string {
	if len(s) <= maxEchoed {
		return strconv.Quote(s)
	}
	cut := maxEchoed
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "… (" + strconv.Itoa(len(s)) + " bytes)"
}

// publicMessage is err's message as a client may see it: no filesystem path
// of the server (the paths of path errors and the blob store's root are
// replaced by "<path>"), every quoted input cut to maxEchoed bytes (errors
// from the catalog, blob and auth packages quote what they were given, in
// full), and the whole cut to maxMessage bytes.
func (s *Server) publicMessage(err error) string {
	msg := err.Error()
	var paths []string
	walkErrors(err, func(e error) {
		switch pe := e.(type) {
		case *fs.PathError:
			paths = append(paths, pe.Path)
		case *os.LinkError:
			paths = append(paths, pe.Old, pe.New)
		}
	})
	if rooted, ok := s.cfg.Blobs.(interface{ Root() string }); ok {
		paths = append(paths, rooted.Root())
	}
	for _, p := range paths {
		if len(p) > 1 {
			msg = strings.ReplaceAll(msg, p, "<path>")
		}
	}
	msg = shortenQuoted(msg)
	if len(msg) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}

// walkErrors calls fn on err and every error it wraps.
func walkErrors(err error, fn func(error)) {
	if err == nil {
		return
	}
	fn(err)
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		walkErrors(u.Unwrap(), fn)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			walkErrors(e, fn)
		}
	}
}

// shortenQuoted cuts every Go-quoted string in msg longer than maxEchoed
// bytes (unquoted) as quoteInput would.
func shortenQuoted(msg string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			return b.String()
		}
		b.WriteString(msg[:i])
		msg = msg[i:]
		q, err := strconv.QuotedPrefix(msg)
		if err != nil {
			b.WriteByte('"')
			msg = msg[1:]
			continue
		}
		if u, err := strconv.Unquote(q); err == nil && len(u) > maxEchoed {
			b.WriteString(quoteInput(u))
		} else {
			b.WriteString(q)
		}
		msg = msg[len(q):]
	}
}
