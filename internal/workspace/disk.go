package workspace

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
)

// Disk workspaces run qemu-img as root on verified blobs. qemu-img is never
// left to follow a name written in an image: overlays are created without
// opening their base (-u, with the size depot read), and a commit opens the
// overlay with its whole chain spelled out, each link's file and driver
// explicit and the last one's backing null (pinnedSpec).

// createOverlay makes an empty qcow2 overlay at path on the verified base,
// naming it by its absolute cache path and format.
func createOverlay(ctx context.Context, base cache.Image, path string) error {
	size, err := virtualSize(base)
	if err != nil {
		return err
	}
	return run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", base.Path, "-F", base.Format, path, strconv.FormatUint(size, 10))
}

// virtualSize is the disk size a verified base presents to a guest.
func virtualSize(base cache.Image) (uint64, error) {
	switch base.Format {
	case format.QCOW2:
		f, err := os.Open(base.Path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		h, err := qcow2.ReadHeader(f)
		if err != nil {
			return 0, fmt.Errorf("qcow2 header of %s: %v: %w", base.Digest, err, errdefs.ErrCorrupt)
		}
		return h.VirtualSize, nil
	case format.Raw:
		return uint64(base.Size), nil
	}
	return 0, fmt.Errorf("a %s image cannot back a disk overlay: %w", base.Format, errdefs.ErrInvalidArgument)
}

// checkOverlay refuses an overlay whose header now makes qemu read guest
// data from another file: the pinned spec fixes every backing link, but
// qemu takes an external data file from the overlay's own header, and the
// edit (or anyone with access to the workspace) may have written one.
func checkOverlay(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h, err := qcow2.ReadHeader(f)
	if err != nil {
		return fmt.Errorf("overlay %s: %v: %w", path, err, errdefs.ErrCorrupt)
	}
	if h.ExternalData() {
		return &errdefs.UnsafeContentError{What: "an external data file", Name: h.DataFile,
			Reason: "the workspace's overlay was changed to read guest data from a file outside it; depot will not flatten that into an image",
			Fix:    "depot workspace discard NAME, then edit again"}
	}
	return nil
}

// pinnedSpec is a qemu "json:" filename that opens the overlay at path on
// exactly base and its verified chain: every file and driver is given, so
// qemu reads no backing name or format from any header.
func pinnedSpec(path string, base cache.Image) (string, error) {
	links := append([]cache.Link{{Path: base.Path, Digest: base.Digest, Format: base.Format}}, base.Chain...)
	var below any // JSON null: the last link has no backing
	for i := len(links) - 1; i >= 0; i-- {
		l := links[i]
		node := map[string]any{"driver": l.Format, "file": map[string]any{"driver": "file", "filename": l.Path}}
		switch l.Format {
		case format.QCOW2:
			node["backing"] = below
		case format.Raw:
		default:
			return "", fmt.Errorf("backing chain link %s is %s (qcow2 and raw can back a disk): %w", l.Digest, l.Format, errdefs.ErrUnsafeContent)
		}
		below = node
	}
	top := map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": path}, "backing": below}
	b, err := json.Marshal(top)
	if err != nil {
		return "", err
	}
	return "json:" + string(b), nil
}
