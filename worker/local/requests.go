package local

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// The payloads of the SSH requests and channels the server handles (RFC
// 4254), parsed from what the client sent and checked so that nothing
// malformed reaches exec or the pty.

type ptyRequest struct {
	Term   string
	Cols   uint32
	Rows   uint32
	Width  uint32
	Height uint32
	Modes  string
}

type windowChange struct {
	Cols   uint32
	Rows   uint32
	Width  uint32
	Height uint32
}

type envRequest struct {
	Name  string
	Value string
}

type execRequest struct {
	Command string
}

type signalRequest struct {
	Signal string
}

type exitStatus struct {
	Status uint32
}

type exitSignal struct {
	Signal     string
	CoreDumped bool
	Error      string
	Lang       string
}

type directTCPIPRequest struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// maxTermLength bounds TERM; real values are a few bytes.
const maxTermLength = 256

func parsePtyRequest(payload []byte) (ptyRequest, error) {
	var r ptyRequest
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("malformed pty-req: %w", err)
	}
	if len(r.Term) > maxTermLength || strings.ContainsRune(r.Term, 0) || strings.ContainsRune(r.Term, '=') {
		return r, errors.New("pty-req: bad terminal name")
	}
	return r, nil
}

func parseWindowChange(payload []byte) (windowChange, error) {
	var r windowChange
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("malformed window-change: %w", err)
	}
	return r, nil
}

// parseEnv returns the variable of an env request if it is one the server
// accepts: like macOS's sshd, LANG and LC_* only.
func parseEnv(payload []byte) (string, error) {
	var r envRequest
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return "", fmt.Errorf("malformed env request: %w", err)
	}
	if !acceptedEnvName(r.Name) {
		return "", fmt.Errorf("env: variable %q not accepted (only LANG and LC_*)", r.Name)
	}
	if strings.ContainsRune(r.Value, 0) {
		return "", fmt.Errorf("env: value of %s holds a NUL byte", r.Name)
	}
	return r.Name + "=" + r.Value, nil
}

func acceptedEnvName(name string) bool {
	if name == "LANG" {
		return true
	}
	rest, ok := strings.CutPrefix(name, "LC_")
	if !ok {
		return false
	}
	for _, c := range []byte(rest) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func parseExec(payload []byte) (string, error) {
	var r execRequest
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return "", fmt.Errorf("malformed exec request: %w", err)
	}
	if strings.ContainsRune(r.Command, 0) {
		return "", errors.New("exec: command holds a NUL byte")
	}
	return r.Command, nil
}

func parseSignal(payload []byte) (string, error) {
	var r signalRequest
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return "", fmt.Errorf("malformed signal request: %w", err)
	}
	return r.Signal, nil
}

func parseDirectTCPIP(payload []byte) (directTCPIPRequest, error) {
	var r directTCPIPRequest
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("malformed direct-tcpip request: %w", err)
	}
	if r.Host == "" || strings.ContainsRune(r.Host, 0) {
		return r, errors.New("direct-tcpip: bad host")
	}
	if r.Port == 0 || r.Port > 65535 {
		return r, fmt.Errorf("direct-tcpip: bad port %d", r.Port)
	}
	return r, nil
}
