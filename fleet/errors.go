package fleet

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a failure the API reports to its client: an HTTP status and a
// message that says what was wrong.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

func notFound(kind, name string) *Error {
	return errorf(http.StatusNotFound, "%s %q not found", kind, name)
}

// StatusOf returns the HTTP status for err: its own for an *Error, 500
// otherwise.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return http.StatusInternalServerError
}

// IsNotFound reports whether err is a 404.
func IsNotFound(err error) bool { return StatusOf(err) == http.StatusNotFound }
