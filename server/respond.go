package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"

	"github.com/depot-images/depot/api"
)

// respWriter records the status and byte count of a response. It forwards
// ReadFrom so that content still goes out with sendfile.
type respWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
}

func (w *respWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *respWriter) ReadFrom(r io.Reader) (int64, error) {
	w.wroteHeader = true
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
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, slog.String("err", err.Error()))
	}
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
