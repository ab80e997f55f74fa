package server

import (
	"errors"
	"fmt"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
)

// checkPortable refuses an upload in a format whose images name other
// files (qcow, qed, vmdk), and one whose qcow2 header would make qemu on a
// node open anything but a verified blob: a backing file not named by the
// bare hex of a digest (with its format recorded), or an external data
// file. Nodes refuse such images anyway (qcow2.Resolve); refusing them here
// shows the mistake at push time, with the same fix-it message.
func checkPortable(fmtName string, head *qcow2.HeaderBuffer) error {
	if err := format.RefuseNamesFiles(fmtName); err != nil {
		return err
	}
	if fmtName != format.QCOW2 || !head.IsQcow2() {
		return nil
	}
	h, err := head.Header()
	if err != nil {
		if errors.Is(err, qcow2.ErrNotQcow2) {
			return &errdefs.UnsafeContentError{What: "a qcow2 header", Name: "",
				Reason: fmt.Sprintf("qemu would refuse or misread it (%v)", err),
				Fix:    "qemu-img check IMAGE, or qemu-img convert -O qcow2 IMAGE NEW"}
		}
		return err
	}
	_, err = qcow2.Resolve(h, "")
	return err
}
