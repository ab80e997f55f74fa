package chunks

import (
	"fmt"
	"io"

	cdc "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc" // registers "fastcdc-v1.0.0"
)

// cdcAlgorithm is go-cdc-chunkers' name for the boundaries of Algorithm.
const cdcAlgorithm = "fastcdc-v1.0.0"

// newCDC returns a go-cdc-chunkers chunker for p reading from r, with a scan
// buffer of twice p.Max (the module's default factor).
func newCDC(r io.Reader, p Params) (*cdc.Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c, err := cdc.NewChunkerBuffer(cdcAlgorithm, r, &cdc.ChunkerOpts{
		MinSize: int(p.Min), NormalSize: int(p.Avg), MaxSize: int(p.Max),
	}, make([]byte, 2*int(p.Max)))
	if err != nil {
		return nil, fmt.Errorf("chunker %s: %w", cdcAlgorithm, err)
	}
	return c, nil
}
