package catalog

import (
	"crypto/rand"
	"encoding/hex"
)

// The name rules (names.IsUID, names.ValidateName) live in internal/names,
// so clients and references use them without linking the catalog.

// NewUID returns a fresh random UID.
func NewUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b)
}
