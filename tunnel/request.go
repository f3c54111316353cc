package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Operations a controller-opened stream asks for.
const (
	// OpDial connects the stream to a TCP port of a VM.
	OpDial byte = 1
	// OpIP asks for a VM's IP address; the answer is the Response's
	// message.
	OpIP byte = 2
)

const requestVersion = 1

// Request opens every stream the controller opens.
type Request struct {
	Op byte
	// Port is the VM's TCP port for OpDial, 0 otherwise.
	Port uint16
	// LocalName names the VM instance (v1.LocalNameFor).
	LocalName string
}

// Response codes.
const (
	CodeOK byte = 0
	// CodeNoSuchVM: the worker holds no running instance by that name.
	CodeNoSuchVM byte = 1
	// CodeUnreachable: the VM is there but did not accept the connection
	// (yet): worth retrying while a caller is willing to wait.
	CodeUnreachable byte = 2
	// CodeBadRequest: the worker could not parse or does not support the
	// request.
	CodeBadRequest byte = 3
)

// Response answers a Request.
type Response struct {
	Code    byte
	Message string
}

// maxText bounds names and messages in headers.
const maxText = 1024

// ErrBadHeader is returned for a malformed Request or Response.
var ErrBadHeader = errors.New("malformed stream header")

// WriteRequest writes r: version (1 byte), op (1), port (2, big-endian),
// name length (2) and name.
func WriteRequest(w io.Writer, r Request) error {
	if len(r.LocalName) == 0 || len(r.LocalName) > maxText {
		return fmt.Errorf("write stream request: name of %d bytes: %w", len(r.LocalName), ErrBadHeader)
	}
	b := make([]byte, 6+len(r.LocalName))
	b[0], b[1] = requestVersion, r.Op
	binary.BigEndian.PutUint16(b[2:], r.Port)
	binary.BigEndian.PutUint16(b[4:], uint16(len(r.LocalName)))
	copy(b[6:], r.LocalName)
	_, err := w.Write(b)
	return err
}

// ReadRequest reads a Request written by WriteRequest.
func ReadRequest(rd io.Reader) (Request, error) {
	var h [6]byte
	if _, err := io.ReadFull(rd, h[:]); err != nil {
		return Request{}, fmt.Errorf("read stream request: %w", unexpected(err))
	}
	if h[0] != requestVersion {
		return Request{}, fmt.Errorf("read stream request: version %d: %w", h[0], ErrBadHeader)
	}
	r := Request{Op: h[1], Port: binary.BigEndian.Uint16(h[2:])}
	if r.Op != OpDial && r.Op != OpIP {
		return Request{}, fmt.Errorf("read stream request: operation %d: %w", r.Op, ErrBadHeader)
	}
	n := int(binary.BigEndian.Uint16(h[4:]))
	if n == 0 || n > maxText {
		return Request{}, fmt.Errorf("read stream request: name of %d bytes: %w", n, ErrBadHeader)
	}
	name := make([]byte, n)
	if _, err := io.ReadFull(rd, name); err != nil {
		return Request{}, fmt.Errorf("read stream request: %w", unexpected(err))
	}
	r.LocalName = string(name)
	return r, nil
}

// WriteResponse writes r: code (1 byte), message length (2) and message.
func WriteResponse(w io.Writer, r Response) error {
	msg := r.Message
	if len(msg) > maxText {
		msg = msg[:maxText]
	}
	b := make([]byte, 3+len(msg))
	b[0] = r.Code
	binary.BigEndian.PutUint16(b[1:], uint16(len(msg)))
	copy(b[3:], msg)
	_, err := w.Write(b)
	return err
}

// ReadResponse reads a Response written by WriteResponse.
func ReadResponse(rd io.Reader) (Response, error) {
	var h [3]byte
	if _, err := io.ReadFull(rd, h[:]); err != nil {
		return Response{}, fmt.Errorf("read stream response: %w", unexpected(err))
	}
	r := Response{Code: h[0]}
	if r.Code > CodeBadRequest {
		return Response{}, fmt.Errorf("read stream response: code %d: %w", r.Code, ErrBadHeader)
	}
	n := int(binary.BigEndian.Uint16(h[1:]))
	if n > maxText {
		return Response{}, fmt.Errorf("read stream response: message of %d bytes: %w", n, ErrBadHeader)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(rd, msg); err != nil {
		return Response{}, fmt.Errorf("read stream response: %w", unexpected(err))
	}
	r.Message = string(msg)
	return r, nil
}
