package cli

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/workspace"
)

func (o *cacheOptions) workspaces(g *globals) (*workspace.Manager, error) {
	c, err := o.open(g)
	if err != nil {
		return nil, err
	}
	tok, err := g.resolveToken()
	if err != nil {
		return nil, err
	}
	cl, err := client.New(g.server, tok, client.WithTimeouts(g.timeouts))
	if err != nil {
		return nil, err
	}
	return &workspace.Manager{Cache: c, Client: cl}, nil
}

func printStatus(w io.Writer, st workspace.Status) {
	mod := "clean"
	if st.Modified {
		mod = "modified"
	}
	fmt.Fprintf(w, "workspace %s\n  image:   %s (uid %s) on %s\n  base:    %s (%s, %s)\n  changes: %s\n  server:  %s", inert(st.Dir), inert(st.Name), inert(st.UID), inert(st.Meta.Server), inert(st.Base.String()), inert(st.BaseFormat), inert(string(st.Kind)), mod, inert(st.State.String()))
	if st.NewUID != "" {
		fmt.Fprintf(w, " (the name now belongs to %s)", inert(st.NewUID))
	}
	if st.ServerDigest != "" {
		fmt.Fprintf(w, " (now %s by %s%s)", inert(st.ServerDigest.String()), inert(st.By), onHead(st.On))
	}
	fmt.Fprintln(w)
}

func newEditCmd(g *globals) *cobra.Command {
	o := &cacheOptions{}
	var execCmd string
	var network bool
	cmd := &cobra.Command{
		Use:   "edit NAME|UID [--exec CMD [--network]]",
		Short: "Check an image out into a workspace (or continue the existing one)",
		Long: `Check an image out of the server into a workspace bound to its UID and base
digest (the name is for display only). squashfs and tar images are unpacked
into <workspace>/root; qcow2 and raw images get a qcow2 overlay on the verified
cached base, which is never modified. Running edit again continues the same
workspace with its staged changes. Workspaces (<cache>/work) are private
(0700) to the user depot runs as, root on a node: a checkout keeps the
image's setuid binaries.

For an unpacked image, --exec runs /bin/sh -c CMD (the image needs /bin/sh)
as root in a bubblewrap sandbox (bwrap; Debian/Ubuntu package bubblewrap;
without it --exec refuses, it never falls back to chroot): the image root is
/, with its own PID, IPC, UTS and mount namespaces, a fresh /proc, a minimal
/dev, a clean environment, and fewer capabilities than host root. It has no
network unless --network is given: installing packages (apt-get, dnf) needs
--network, which shares the host's network, loopback services included.
For a qcow2 or raw image, --exec runs CMD on the host, as you, with
$DEPOT_DISK set to the workspace's overlay (for qemu-io, guestfish and such).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if network && execCmd == "" {
				return usageError{errors.New("--network only applies to --exec")}
			}
			m, err := o.workspaces(g)
			if err != nil {
				return err
			}
			st, err := m.Edit(cmd.Context(), args[0], workspace.EditOptions{Exec: execCmd, Network: network, Stdout: g.stdout, Stderr: g.stderr})
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) { printStatus(w, st) })
		},
	}
	o.addDirFlag(cmd.Flags())
	cmd.Flags().StringVar(&execCmd, "exec", "", "command to run in the working copy (in a bubblewrap sandbox for an unpacked image)")
	cmd.Flags().BoolVar(&network, "network", false, "give the --exec sandbox the host's network (needed to install packages)")
	return cmd
}

func newWorkspaceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Short: "List, show and discard edit workspaces"}
	o := &cacheOptions{}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List workspaces with their state on the server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := o.workspaces(g)
			if err != nil {
				return err
			}
			all, err := m.List(cmd.Context())
			if err != nil {
				return err
			}
			return g.emit(all, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tUID\tBASE\tKIND\tCHANGES\tSERVER")
				for _, st := range all {
					mod := "clean"
					if st.Modified {
						mod = "modified"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", inert(st.Name), inert(st.UID), inert(shortDigest(st.Base.String())), inert(string(st.Kind)), mod, inert(st.State.String()))
				}
				tw.Flush()
			})
		},
	}
	show := &cobra.Command{
		Use:   "show NAME|UID",
		Short: "Show a workspace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := o.workspaces(g)
			if err != nil {
				return err
			}
			st, err := m.Show(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) { printStatus(w, st) })
		},
	}
	discard := &cobra.Command{
		Use:   "discard NAME|UID",
		Short: "Delete a workspace and its staged changes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := o.workspaces(g)
			if err != nil {
				return err
			}
			if err := m.Discard(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.emit(map[string]string{"discarded": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "discarded workspace %s\n", inert(args[0])) })
		},
	}
	for _, c := range []*cobra.Command{ls, show, discard} {
		o.addDirFlag(c.Flags())
	}
	cmd.AddCommand(ls, show, discard)
	return cmd
}

func newCommitCmd(g *globals) *cobra.Command {
	o := &cacheOptions{}
	co := workspace.CommitOptions{}
	cmd := &cobra.Command{
		Use:   "commit NAME|UID [-m MSG] [--to UID] [--force]",
		Short: "Repack a workspace and upload it safely (If-Match on the base), then re-base onto the result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := o.workspaces(g)
			if err != nil {
				return err
			}
			bar := g.newProgress("commit " + args[0])
			co.Progress = bar.callback()
			res, err := m.Commit(cmd.Context(), args[0], co)
			bar.finish()
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				if res.Unchanged {
					fmt.Fprintf(w, "nothing to commit: workspace %s has no changes on %s\n", inert(res.Name), inert(res.Digest.String()))
					return
				}
				fmt.Fprintf(w, "committed %s (uid %s): %s (%s, %s); the workspace now builds on it\n", inert(res.Name), inert(res.UID), inert(res.Digest.String()), inert(res.Format), humanBytes(res.Size))
				if res.Delta {
					fmt.Fprintf(w, "sent %s as a delta, reused %s the server had\n", humanBytes(res.BytesSent), humanBytes(res.BytesReused))
				} else if res.DeltaFallback != "" {
					fmt.Fprintf(w, "sent whole, not as a delta: %s\n", inert(res.DeltaFallback))
				}
			})
		},
	}
	o.addDirFlag(cmd.Flags())
	cmd.Flags().StringVarP(&co.Message, "message", "m", "", "revision message")
	cmd.Flags().StringVar(&co.To, "to", "", "upload into this image UID instead (the bound one was deleted)")
	cmd.Flags().BoolVar(&co.Force, "force", false, "overwrite content that moved on the server")
	cmd.Flags().BoolVar(&co.NoDelta, "no-delta", false, "send the whole image, never a delta against the content it replaces")
	return cmd
}
