// Command depot is the disk-image server and verifying image cache. All the
// logic lives in package cli and below; this file only wires up the process.
package main

import (
	"os"

	"github.com/depot-images/depot/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
