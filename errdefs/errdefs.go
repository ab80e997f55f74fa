// Package errdefs is depot's one error vocabulary.
//
// Every layer (blob stores, catalogs, the server, the client, the cache and
// the CLI) reports failures as one of the sentinel classes below, wrapped with
// %w and context, or as one of the typed errors that carry the digests and
// UIDs involved. Callers test with errors.Is / errors.As, never by message.
//
// The package owns the vocabulary only. The mapping to HTTP status codes lives
// in package server, the mapping back in package client, and the mapping to
// exit codes in package cli; each is a single table.
package errdefs

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Error classes. Wrap them with fmt.Errorf("…: %w", ErrX).
var (
	// ErrNotFound: the image, blob, token or revision does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a name or blob is already taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidArgument: the request or reference is malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict: the state changed underneath the caller (frozen image,
	// base digest moved, UID mismatch).
	ErrConflict = errors.New("conflict")
	// ErrPrecondition: an explicit precondition (If-Match) did not hold.
	ErrPrecondition = errors.New("precondition failed")
	// ErrUnauthorized: no or an invalid credential.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: a valid credential without the needed role.
	ErrForbidden = errors.New("forbidden")
	// ErrTooLarge: a bounded input exceeded its limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: a source or backend cannot be reached right now.
	ErrUnavailable = errors.New("unavailable")
	// ErrVerification: content did not hash to what was expected.
	ErrVerification = errors.New("verification failed")
	// ErrDigestUnavailable: the source cannot supply the wanted digest.
	ErrDigestUnavailable = errors.New("digest unavailable")
	// ErrCorrupt: a stored entry failed an integrity check.
	ErrCorrupt = errors.New("corrupt")
	// ErrNoSpace: the disk or quota that was to hold the content is full.
	// Nothing partial was kept; free space and retry.
	ErrNoSpace = errors.New("no space left")
	// ErrUnsafeContent: verified content names something depot will not let
	// qemu, tar or a shell open: a host file as a qcow2 backing file, an
	// external data file, a backing file without a recorded format. The
	// bytes are what was asked for; they are not safe to use.
	ErrUnsafeContent = errors.New("unsafe content")
)

// UnsafeContentError says an image names something outside the verified
// cache. It matches ErrUnsafeContent with errors.Is. Name is hostile data:
// Error() quotes it, so it prints inert.
type UnsafeContentError struct {
	Digest digest.Digest // the image that names it; empty before it is stored
	What   string        // "backing file", "external data file", "a vmdk image", …
	Name   string        // the name as the image writes it; empty when the format itself is refused
	Reason string        // why it is refused
	Fix    string        // a command that makes the image acceptable
}

func (e *UnsafeContentError) Error() string {
	who := "the image"
	if e.Digest != "" {
		who = "image " + e.Digest.String()
	}
	msg := fmt.Sprintf("%s names %s %q: %s", who, e.What, e.Name, e.Reason)
	if e.Name == "" {
		msg = fmt.Sprintf("%s is %s: %s", who, e.What, e.Reason)
	}
	if e.Fix != "" {
		msg += "; fix the image with: " + e.Fix
	}
	return msg + ": " + ErrUnsafeContent.Error()
}

// Is makes errors.Is(err, ErrUnsafeContent) true.
func (e *UnsafeContentError) Is(target error) bool { return target == ErrUnsafeContent }

// VerificationError says content hashed to Got where Want was expected.
// It matches ErrVerification with errors.Is.
type VerificationError struct {
	Want, Got digest.Digest
	// Size mismatch, when that was what failed; zero otherwise.
	WantSize, GotSize int64
}

func (e *VerificationError) Error() string {
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("verification failed: wanted %d bytes, got %d", e.WantSize, e.GotSize)
	}
	return fmt.Sprintf("verification failed: wanted %s, got %s", e.Want, e.Got)
}

// Is makes errors.Is(err, ErrVerification) true.
func (e *VerificationError) Is(target error) bool { return target == ErrVerification }

// DigestUnavailableError says the source cannot supply Want; Have is what
// the pointer resolves to now (empty when nothing).
type DigestUnavailableError struct {
	Ref  string
	Want digest.Digest
	Have digest.Digest
}

func (e *DigestUnavailableError) Error() string {
	if e.Have == "" {
		return fmt.Sprintf("digest unavailable: %s wanted %s, the source has no content", e.Ref, e.Want)
	}
	return fmt.Sprintf("digest unavailable: %s wanted %s, the source has %s", e.Ref, e.Want, e.Have)
}

// Is makes errors.Is(err, ErrDigestUnavailable) true.
func (e *DigestUnavailableError) Is(target error) bool { return target == ErrDigestUnavailable }

// PreconditionError says the content base moved: the caller expected Want
// and the image now holds Have.
type PreconditionError struct {
	UID  string
	Want digest.Digest
	Have digest.Digest
}

func (e *PreconditionError) Error() string {
	have := string(e.Have)
	if have == "" {
		have = "no content"
	}
	return fmt.Sprintf("content of %s moved: expected base %s, now %s", e.UID, e.Want, have)
}

// Is makes errors.Is(err, ErrPrecondition) true.
func (e *PreconditionError) Is(target error) bool { return target == ErrPrecondition }
