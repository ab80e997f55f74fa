package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/depot-images/depot/api"
)

// CreateImage creates an image and returns its UID.
func (c *Client) CreateImage(ctx context.Context, req api.CreateImageRequest) (string, error) {
	var uid string
	_, err := c.call(ctx, http.MethodPost, "/images", nil, req, &uid, "create image "+req.Name)
	return uid, err
}

// GetImage fetches an image by UID or name.
func (c *Client) GetImage(ctx context.Context, ref string) (api.Image, error) {
	var img api.Image
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, ""), nil, nil, &img, "image "+ref)
	return img, err
}

// ListImages fetches every image, following pages.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var all []api.Image
	after := ""
	for {
		var page []api.Image
		q := url.Values{"limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		next, err := c.call(ctx, http.MethodGet, "/images", q, nil, &page, "list images")
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" || len(page) == 0 {
			return all, nil
		}
		after = next
	}
}

// UpdateImage patches an image's fields.
func (c *Client) UpdateImage(ctx context.Context, ref string, req api.PatchImageRequest) (api.Image, error) {
	var img api.Image
	_, err := c.call(ctx, http.MethodPatch, imagePath(ref, ""), nil, req, &img, "update image "+ref)
	return img, err
}

// DeleteImage deletes an image; its content is collected when unreferenced.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	_, err := c.call(ctx, http.MethodDelete, imagePath(ref, ""), nil, nil, nil, "delete image "+ref)
	return err
}

// CloneImage creates a new image sharing src's content and returns its UID.
func (c *Client) CloneImage(ctx context.Context, src string, req api.CloneRequest) (string, error) {
	var uid string
	_, err := c.call(ctx, http.MethodPost, imagePath(src, "/clone"), nil, req, &uid, "clone image "+src)
	return uid, err
}

// History lists content revisions, newest first.
func (c *Client) History(ctx context.Context, ref string) ([]api.Revision, error) {
	var revs []api.Revision
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/history"), nil, nil, &revs, "history of "+ref)
	return revs, err
}

// ContentInfo is …/content/info.
func (c *Client) ContentInfo(ctx context.Context, ref string) (api.ContentInfo, error) {
	var info api.ContentInfo
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/content/info"), nil, nil, &info, "content info of "+ref)
	return info, err
}

// ContentStat is …/content/stat.
func (c *Client) ContentStat(ctx context.Context, ref string) (api.ContentStat, error) {
	var st api.ContentStat
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/content/stat"), nil, nil, &st, "content stat of "+ref)
	return st, err
}

// DeleteContent removes an image's content and history.
func (c *Client) DeleteContent(ctx context.Context, ref string) error {
	_, err := c.call(ctx, http.MethodDelete, imagePath(ref, "/content"), nil, nil, nil, "delete content of "+ref)
	return err
}
