package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/depot-images/depot/api"
)

// CreateToken mints a token; the answer carries the secret once.
func (c *Client) CreateToken(ctx context.Context, req api.TokenRequest) (api.Token, error) {
	var t api.Token
	_, err := c.call(ctx, http.MethodPost, "/tokens", nil, req, &t, "create token")
	return t, err
}

// ServerInfo fetches what the server tells clients before they upload. A
// server older than GET /server answers ErrNotFound.
func (c *Client) ServerInfo(ctx context.Context) (api.ServerInfo, error) {
	var si api.ServerInfo
	_, err := c.call(ctx, http.MethodGet, "/server", nil, nil, &si, "server info")
	return si, err
}

// ListTokens lists token records (never secrets).
func (c *Client) ListTokens(ctx context.Context) ([]api.Token, error) {
	var ts []api.Token
	_, err := c.call(ctx, http.MethodGet, "/tokens", nil, nil, &ts, "list tokens")
	return ts, err
}

// DeleteToken revokes a token.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/tokens/"+url.PathEscape(id), nil, nil, nil, "revoke token "+id)
	return err
}
