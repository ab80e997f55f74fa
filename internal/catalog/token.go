package catalog

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// Token is the record of an issued API token. The secret never is stored:
// tokens are signed, and the record exists so a token can be listed and revoked.
type Token struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	Role      string    `json:"role"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// DecodeToken decodes a stored token record; damage is ErrCorrupt.
func DecodeToken(id string, v []byte) (Token, error) {
	var t Token
	if err := json.Unmarshal(v, &t); err != nil {
		return Token{}, fmt.Errorf("token record %q is damaged: %v: %w", id, err, errdefs.ErrCorrupt)
	}
	return t, nil
}
