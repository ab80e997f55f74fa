package server

import "net/http"

// putContent is a content upload, in three steps: parseUpload reads what
// the request declares and refuses what it can before the body
// (uploadheaders.go); receive streams the body into a private blob write
// and checks it (receive.go); commitUpload makes the blob visible and
// records it as the image's content (commit.go). Nothing is visible
// before the last step, and a failure at any step leaves no trace but
// an unreferenced blob for GC.
func (s *Server) putContent(w http.ResponseWriter, r *http.Request) {
	u, err := s.parseUpload(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var got received
	var reused int64 // bytes a delta push took from its base
	if u.delta != "" {
		got, reused, err = s.receiveDelta(w, r, u)
	} else {
		got, err = s.receive(w, r, u)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	img, c, err := s.commitUpload(r, u, got)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if u.delta != "" {
		s.metrics.deltaSaved.Add(float64(reused))
		s.log.Info("content uploaded", "uid", img.UID, "name", img.Name, "digest", c.Digest, "bytes", c.Size, "fmt", c.Format, "by", c.By,
			"delta_base", u.delta, "reused", reused)
	} else {
		s.log.Info("content uploaded", "uid", img.UID, "name", img.Name, "digest", c.Digest, "bytes", c.Size, "fmt", c.Format, "by", c.By)
	}
	s.answerInfo(w, r, img, http.StatusOK, true)
}
