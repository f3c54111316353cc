package local

import (
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestAcceptedEnvName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"LANG", true},
		{"LC_ALL", true},
		{"LC_CTYPE", true},
		{"LC_", true},
		{"LC_my_var2", true},
		{"lang", false},
		{"LANGUAGE", false},
		{"LC", false},
		{"LC_A=B", false},
		{"LC_A B", false},
		{"LC_\x00", false},
		{"PATH", false},
		{"LD_PRELOAD", false},
		{"GITHUB_TOKEN", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := acceptedEnvName(tt.name); got != tt.want {
			t.Errorf("acceptedEnvName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParsers(t *testing.T) {
	if _, err := parseEnv(ssh.Marshal(envRequest{"LANG", "C\x00x"})); err == nil {
		t.Error("env value with NUL accepted")
	}
	if _, err := parsePtyRequest(ssh.Marshal(ptyRequest{Term: "xterm=evil"})); err == nil {
		t.Error("TERM with '=' accepted")
	}
	if _, err := parsePtyRequest(ssh.Marshal(ptyRequest{Term: strings.Repeat("x", maxTermLength+1)})); err == nil {
		t.Error("overlong TERM accepted")
	}
	for _, r := range []directTCPIPRequest{{Host: "", Port: 80}, {Host: "h", Port: 0}, {Host: "h", Port: 70000}, {Host: "a\x00b", Port: 1}} {
		if _, err := parseDirectTCPIP(ssh.Marshal(r)); err == nil {
			t.Errorf("direct-tcpip %+v accepted", r)
		}
	}
	if r, err := parseDirectTCPIP(ssh.Marshal(directTCPIPRequest{"127.0.0.1", 8080, "127.0.0.1", 5555})); err != nil || r.Host != "127.0.0.1" || r.Port != 8080 {
		t.Errorf("valid direct-tcpip: %+v, %v", r, err)
	}
	// Trailing bytes make a payload malformed.
	if _, err := parseExec(append(ssh.Marshal(execRequest{"true"}), 0)); err == nil {
		t.Error("exec payload with trailing data accepted")
	}
}

func FuzzRequestPayloads(f *testing.F) {
	f.Add(ssh.Marshal(envRequest{"LANG", "en_US.UTF-8"}))
	f.Add(ssh.Marshal(envRequest{"FOO", "bar"}))
	f.Add(ssh.Marshal(execRequest{"echo hi"}))
	f.Add(ssh.Marshal(ptyRequest{"xterm", 80, 24, 0, 0, ""}))
	f.Add(ssh.Marshal(windowChange{132, 50, 0, 0}))
	f.Add(ssh.Marshal(signalRequest{"TERM"}))
	f.Add(ssh.Marshal(directTCPIPRequest{"localhost", 22, "127.0.0.1", 4242}))
	f.Add([]byte{0, 0, 0, 255, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if entry, err := parseEnv(payload); err == nil {
			name, value, _ := strings.Cut(entry, "=")
			if !acceptedEnvName(name) || strings.ContainsRune(entry, 0) {
				t.Fatalf("parseEnv accepted %q", entry)
			}
			if again, err := parseEnv(ssh.Marshal(envRequest{name, value})); err != nil || again != entry {
				t.Fatalf("env %q does not survive a round trip: %q, %v", entry, again, err)
			}
		}
		if command, err := parseExec(payload); err == nil {
			if strings.ContainsRune(command, 0) {
				t.Fatalf("parseExec accepted a NUL byte: %q", command)
			}
			if again, err := parseExec(ssh.Marshal(execRequest{command})); err != nil || again != command {
				t.Fatalf("exec %q does not survive a round trip", command)
			}
		}
		if r, err := parsePtyRequest(payload); err == nil {
			if len(r.Term) > maxTermLength || strings.ContainsAny(r.Term, "\x00=") {
				t.Fatalf("parsePtyRequest accepted TERM %q", r.Term)
			}
		}
		if r, err := parseDirectTCPIP(payload); err == nil {
			if r.Host == "" || r.Port == 0 || r.Port > 65535 || strings.ContainsRune(r.Host, 0) {
				t.Fatalf("parseDirectTCPIP accepted %+v", r)
			}
		}
		parseWindowChange(payload)
		parseSignal(payload)
	})
}

func FuzzShutdownRequest(f *testing.F) {
	const id = "0123456789abcdef"
	f.Add(id + "/orchard-vm-1-uid-0")
	f.Add(id + "/")
	f.Add(id + "/../etc")
	f.Add("fedcba9876543210/orchard-vm")
	f.Add("")
	f.Fuzz(func(t *testing.T, line string) {
		name, ok := parseShutdownRequest(line, id)
		if !ok {
			return
		}
		if validName(name) != nil || line != id+"/"+name {
			t.Fatalf("parseShutdownRequest(%q) = %q", line, name)
		}
	})
}
