package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/catalog/bolt"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage API tokens (admin)"}
	cmd.AddCommand(newTokenCreateCmd(g), newTokenLsCmd(g), newTokenRmCmd(g))
	return cmd
}

type tokenCreateOptions struct {
	role    string
	subject string
	ttl     time.Duration
	data    string
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	o := &tokenCreateOptions{}
	cmd := &cobra.Command{
		Use:   "create --role reader|writer|admin [--subject NAME]",
		Short: "Mint a token; prints it once",
		Long: `Mint a token. Through the server (with an admin token), or with --data DIR
directly on a stopped server's data directory, when that server keeps its
catalog there (bbolt; depot serve records which in <data>/catalog-kind). A head
on etcd mints only through the server. The token is printed once on stdout and
is never logged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := auth.ParseRole(o.role); err != nil {
				return usageError{err}
			}
			if o.subject == "" {
				o.subject = o.role
			}
			var tok api.Token
			var err error
			if o.data != "" {
				tok, err = mintLocal(cmd.Context(), o)
			} else {
				c, cerr := g.client()
				if cerr != nil {
					return cerr
				}
				req := api.TokenRequest{Subject: o.subject, Role: o.role}
				if o.ttl > 0 {
					req.TTL = o.ttl.String()
				}
				tok, err = c.CreateToken(cmd.Context(), req)
			}
			if err != nil {
				return err
			}
			return g.emit(tok, func(w io.Writer) { fmt.Fprintln(w, tok.Token) })
		},
	}
	cmd.Flags().StringVar(&o.role, "role", "reader", "reader, writer or admin")
	cmd.Flags().StringVar(&o.subject, "subject", "", "who will use the token (default: the role)")
	cmd.Flags().DurationVar(&o.ttl, "ttl", 0, "expiry (e.g. 720h); 0 never expires")
	cmd.Flags().StringVar(&o.data, "data", "", "mint directly in this data directory (server stopped)")
	return cmd
}

// mintLocal mints into the bbolt catalog of a stopped head's data
// directory, and only when depot serve recorded there that it uses that
// catalog: on a head whose catalog is etcd, or in a directory no head has
// run on, a token minted here would be one no head accepts.
func mintLocal(ctx context.Context, o *tokenCreateOptions) (api.Token, error) {
	kind, err := readCatalogKind(o.data)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return api.Token{}, usageError{fmt.Errorf("--data %s: no depot serve has recorded its catalog there (%s); start depot serve on it once, or mint through a running head: depot token create --server URL --token-file %s",
			o.data, catalogKindFile, filepath.Join(o.data, "admin.token"))}
	case err != nil:
		return api.Token{}, err
	case kind != catalogBolt:
		return api.Token{}, usageError{fmt.Errorf("--data %s: the head on this directory keeps its catalog in %s, not here, so a token minted here would be one no head accepts; mint through a running head: depot token create --server URL --token-file %s",
			o.data, kind, filepath.Join(o.data, "admin.token"))}
	}
	dbPath := filepath.Join(o.data, "catalog.db")
	if _, err := os.Stat(dbPath); err != nil {
		return api.Token{}, fmt.Errorf("--data %s: the recorded bbolt catalog is missing: %w", o.data, errdefs.ErrNotFound)
	}
	cat, err := bolt.Open(dbPath, time.Second)
	if err != nil {
		return api.Token{}, err
	}
	defer cat.Close()
	a, err := auth.New(ctx, cat)
	if err != nil {
		return api.Token{}, err
	}
	role, _ := auth.ParseRole(o.role)
	secret, rec, err := a.Mint(ctx, o.subject, role, "depot token create --data", o.ttl)
	if err != nil {
		return api.Token{}, err
	}
	return api.Token{ID: rec.ID, Subject: rec.Subject, Role: rec.Role, Created: api.UnixFloat(rec.Created), CreatedBy: rec.CreatedBy, Token: secret}, nil
}

func newTokenLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			toks, err := c.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			return g.emit(toks, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSUBJECT\tROLE\tCREATED\tBY")
				for _, t := range toks {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", inert(t.ID), inert(t.Subject), inert(t.Role), fmtTime(t.Created), inert(t.CreatedBy))
				}
				tw.Flush()
			})
		},
	}
}

func newTokenRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID",
		Short: "Revoke a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.emit(map[string]string{"revoked": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "revoked %s\n", inert(args[0])) })
		},
	}
}
