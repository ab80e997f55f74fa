package server

import (
	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/internal/catalog"
)

// wireImage renders a catalog image in its wire form. The mapping lives
// on the server side so that api, and every client, never links the
// catalog.
func wireImage(img catalog.Image) api.Image {
	out := api.Image{
		UID: img.UID, Name: img.Name, Description: img.Description, Frozen: img.Frozen,
		Created: api.UnixFloat(img.Created), LastModified: api.UnixFloat(img.LastModified), LastModifiedBy: img.LastModifiedBy,
		LastModifiedOn: img.LastModifiedOn,
		History:        []api.Revision{},
	}
	if img.Parent != "" {
		p := img.Parent
		out.Parent = &p
	}
	if img.Distro != "" {
		d := img.Distro
		out.Distro = &d
	}
	if c := img.Content; c != nil {
		// Seed 004's shape: the file keyed by its format. filename is
		// the blob's name in the store (its SHA-256 hex), uid the
		// content's stable id (api.ContentUID).
		out.Content = &api.Content{Fmt: c.Format, ContentFile: api.ContentFile{Size: c.Size, MTime: api.UnixFloat(c.MTime),
			Chksum: c.Digest.String(), Filename: c.Digest.Encoded(), UID: api.ContentUID(c.Digest), BLAKE3: c.BLAKE3, Chunks: c.Chunks.String()},
			LastModified: api.UnixFloat(c.MTime), LastModifiedOn: c.On, LastModifiedBy: c.By}
	}
	for i := len(img.History) - 1; i >= 0; i-- {
		h := img.History[i]
		out.History = append(out.History, api.Revision{Chksum: h.Digest.String(), Size: h.Size, MTime: api.UnixFloat(h.MTime),
			Fmt: h.Format, Chunks: h.Chunks.String(), By: h.By, Message: h.Message, Provenance: wireProvenance(h.Provenance), Current: img.Content != nil && h.Digest == img.Content.Digest && i == len(img.History)-1})
	}
	return out
}
