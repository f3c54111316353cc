package tart

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

func TestRunArgs(t *testing.T) {
	tests := []struct {
		name    string
		vm      v1.VM
		want    []string // between "--no-graphics" and the name
		wantErr string
	}{
		{name: "plain", vm: v1.VM{}, want: nil},
		{name: "softnet", vm: v1.VM{NetSoftnet: true}, want: []string{"--net-softnet"}},
		{name: "softnet kebab", vm: v1.VM{NetSoftnetKebab: true}, want: []string{"--net-softnet"}},
		{name: "softnet allow implies softnet", vm: v1.VM{NetSoftnet: true, NetSoftnetAllow: []string{"10.0.0.0/8"}},
			want: []string{"--net-softnet-allow=10.0.0.0/8"}},
		{name: "softnet block", vm: v1.VM{NetSoftnetBlock: []string{"1.2.3.0/24", "4.5.6.0/24"}},
			want: []string{"--net-softnet-block=1.2.3.0/24,4.5.6.0/24"}},
		{name: "bridged", vm: v1.VM{NetBridged: "Wi-Fi"}, want: []string{"--net-bridged=Wi-Fi"}},
		{name: "bridged and softnet", vm: v1.VM{NetBridged: "en0", NetSoftnetAllow: []string{"10.0.0.0/8"}},
			wantErr: "mutually exclusive"},
		{name: "nested suspendable", vm: v1.VM{Nested: true, Suspendable: true}, want: []string{"--nested", "--suspendable"}},
		{name: "dirs", vm: v1.VM{HostDirs: []v1.HostDir{{Name: "a", Path: "/src", ReadOnly: true}, {Path: "/b"}}},
			want: []string{"--dir=a:/src:ro", "--dir=/b"}},
		{name: "dir without path", vm: v1.VM{HostDirs: []v1.HostDir{{Name: "a"}}}, wantErr: "no path"},
		{name: "dir name with colon", vm: v1.VM{HostDirs: []v1.HostDir{{Name: "a:b", Path: "/x"}}}, wantErr: "contains ':'"},
		{name: "headless is not a flag", vm: v1.VM{Headless: false}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runArgs("orchard-x-u-0", &tt.vm)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("runArgs = %v, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			want := append(append([]string{"run", "--no-graphics"}, tt.want...), "orchard-x-u-0")
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("runArgs = %q, %v; want %q", got, err, want)
			}
		})
	}
}

func TestPullStatus(t *testing.T) {
	const image = "ghcr.io/x/y:latest"
	tests := []struct{ line, want string }{
		{"pulling ghcr.io/x/y:latest...", "pulling ghcr.io/x/y:latest"},
		{"pulling manifest...", "pulling ghcr.io/x/y:latest: manifest"},
		{"pulling disk (25.3 GB compressed)...", "pulling ghcr.io/x/y:latest: disk (25.3 GB compressed)"},
		{"12%", "pulling ghcr.io/x/y:latest: 12%"},
		{"  100%\r", "pulling ghcr.io/x/y:latest: 100%"},
		{"pulling NVRAM...", "pulling ghcr.io/x/y:latest: NVRAM"},
		{"waiting for lock...", "pulling ghcr.io/x/y:latest: waiting for another pull"},
		{"ghcr.io/x/y@sha256:ab image is already cached and linked!", "ghcr.io/x/y@sha256:ab image is already cached and linked!"},
		{`Error pulling image: "timeout", attempting to re-try...`, `Error pulling image: "timeout", attempting to re-try...`},
		{"almost%", "almost%"},
		{"", ""},
		{"   ", ""},
	}
	for _, tt := range tests {
		if got := pullStatus(image, tt.line); got != tt.want {
			t.Errorf("pullStatus(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestError(t *testing.T) {
	exit := func(code int) error { return fmt.Errorf("exit status %d", code) }
	tests := []struct {
		name string
		err  *Error
		msg  string
		is   []error // the sentinels it matches; it must match no other
	}{
		{
			name: "clone of a missing image",
			err:  &Error{Args: []string{"clone", "ghcr.io/x:latest", "orchard-vm-u-0"}, ExitCode: 2, Stderr: `the specified VM "ghcr.io/x:latest" does not exist`, Err: exit(2)},
			msg:  `tart clone ghcr.io/x:latest orchard-vm-u-0: exit status 2: the specified VM "ghcr.io/x:latest" does not exist`,
			is:   []error{ErrNotExist},
		},
		{
			name: "run of a missing VM",
			err:  &Error{Args: []string{"run", "--no-graphics", "x"}, ExitCode: 1, Stderr: `Error: the specified VM "x" does not exist`, Err: exit(1)},
			msg:  `tart run --no-graphics x: exit status 1: Error: the specified VM "x" does not exist`,
			is:   []error{ErrNotExist},
		},
		{
			name: "stop of a stopped VM",
			err:  &Error{Args: []string{"stop", "x"}, ExitCode: 2, Stderr: `VM "x" is not running`, Err: exit(2)},
			msg:  `tart stop x: exit status 2: VM "x" is not running`,
			is:   []error{ErrNotRunning},
		},
		{
			name: "run of a running VM",
			err:  &Error{Args: []string{"run", "x"}, ExitCode: 2, Stderr: `VM "x" is already running!`, Err: exit(2)},
			is:   []error{ErrAlreadyRunning},
		},
		{
			name: "no IP",
			err:  &Error{Args: []string{"ip", "x"}, ExitCode: 1, Stderr: "no IP address found, is your VM running?", Err: exit(1)},
			is:   []error{ErrNoIPAddress},
		},
		{
			name: "delete of a running VM is not 'not running'",
			err:  &Error{Args: []string{"delete", "x"}, ExitCode: 1, Stderr: `VM "x" is running`, Err: exit(1)},
			msg:  `tart delete x: exit status 1: VM "x" is running`,
		},
		{
			name: "usage error quotes odd arguments",
			err:  &Error{Args: []string{"set", "my vm", "--cpu"}, ExitCode: 64, Stderr: "Error: Missing value for '--cpu <cpu>'", Err: exit(64)},
			msg:  `tart set "my vm" --cpu: exit status 64: Error: Missing value for '--cpu <cpu>'`,
		},
		{
			name: "built by hand",
			err:  &Error{Args: []string{"stop", "x"}, ExitCode: 2, Stderr: `VM "x" is not running`},
			msg:  `tart stop x: exit status 2: VM "x" is not running`,
			is:   []error{ErrNotRunning},
		},
		{
			name: "killed, no stderr",
			err:  &Error{Args: []string{"pull", "x/y"}, ExitCode: -1, Err: errors.New("signal: killed")},
			msg:  `tart pull x/y: signal: killed`,
		},
	}
	sentinels := []error{ErrNotExist, ErrNotRunning, ErrAlreadyRunning, ErrNoIPAddress}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.msg != "" && tt.err.Error() != tt.msg {
				t.Errorf("Error() = %q\nwant      %q", tt.err.Error(), tt.msg)
			}
			wrapped := fmt.Errorf("start vm: %w", tt.err)
			for _, s := range sentinels {
				if got, want := errors.Is(wrapped, s), slices.Contains(tt.is, s); got != want {
					t.Errorf("errors.Is(%v) = %v, want %v", s, got, want)
				}
			}
		})
	}
}

func TestCleanStderr(t *testing.T) {
	got := cleanStderr("Error: Unknown option '--x'\nUsage: tart run [<options>] <name>\n  See 'tart run --help' for more information.\n")
	want := "Error: Unknown option '--x'; Usage: tart run [<options>] <name>; See 'tart run --help' for more information."
	if got != want {
		t.Errorf("cleanStderr = %q, want %q", got, want)
	}
	long := strings.Repeat("x", 10<<10) + "\nthe end"
	if got := cleanStderr(long); !strings.HasPrefix(got, "...") || !strings.HasSuffix(got, "; the end") || len(got) > 5<<10 {
		t.Errorf("cleanStderr of 10 KiB = %d bytes, %q...%q", len(got), got[:10], got[len(got)-10:])
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &lineWriter{onLine: func(l string) { lines = append(lines, l) }, limit: 8}
	for _, chunk := range []string{"pul", "ling\r\n1", "2%\n\n", "tail"} {
		w.Write([]byte(chunk))
	}
	if want := []string{"pulling", "12%", ""}; !slices.Equal(lines, want) {
		t.Errorf("lines before Close = %q, want %q", lines, want)
	}
	w.Close()
	if want := []string{"pulling", "12%", "", "tail"}; !slices.Equal(lines, want) {
		t.Errorf("lines after Close = %q, want %q", lines, want)
	}
	if got := w.String(); got != "2%\n\ntail" {
		t.Errorf("kept = %q, want the last 8 bytes", got)
	}

	lines = nil
	endless := &lineWriter{onLine: func(l string) { lines = append(lines, l) }}
	endless.Write([]byte(strings.Repeat("x", maxLine+1)))
	if len(lines) != 1 || len(lines[0]) != maxLine+1 {
		t.Errorf("a line longer than maxLine was not handed on (%d lines)", len(lines))
	}
}

func TestTartHome(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"HOME=/home/a"}, "/home/a/.tart"},
		{[]string{"HOME=/home/a", "TART_HOME=/data/tart"}, "/data/tart"},
		{[]string{"TART_HOME=/one", "HOME=/home/a", "TART_HOME=/two"}, "/two"},
		{[]string{"TART_HOME=", "HOME=/home/b"}, "/home/b/.tart"},
	}
	for _, tt := range tests {
		if got := tartHome(tt.env); got != tt.want {
			t.Errorf("tartHome(%q) = %q, want %q", tt.env, got, tt.want)
		}
	}
}

func TestIgnored(t *testing.T) {
	d := &Driver{}
	if got := d.Ignored(&v1.VM{Headless: false, Nested: true, NetBridged: "en0"}); !slices.Equal(got, []string{"headless"}) {
		t.Errorf("Ignored(graphics) = %q", got)
	}
	if got := d.Ignored(&v1.VM{Headless: true, Suspendable: true}); len(got) != 0 {
		t.Errorf("Ignored(headless) = %q", got)
	}
}

// listExample is the shape `tart list --format json` prints: Apple's
// pretty printer, "/" escaped.
const listExample = `[
  {
    "Source" : "local",
    "Name" : "orchard-vm-1-0",
    "Disk" : 50,
    "Size" : 24,
    "Accessed" : "2026-05-12T21:45:18Z",
    "Running" : true,
    "State" : "running"
  },
  {
    "Source" : "local",
    "Name" : "sequoia",
    "Disk" : 50,
    "Size" : 24,
    "Accessed" : "2026-05-12T21:45:18Z",
    "Running" : false,
    "State" : "stopped"
  },
  {
    "State" : "suspended",
    "Running" : false,
    "Name" : "orchard-vm-2-0",
    "Source" : "local"
  },
  {
    "Source" : "OCI",
    "Name" : "ghcr.io\/cirruslabs\/orchard-image:latest",
    "Disk" : 50,
    "Size" : 24,
    "Accessed" : "2026-05-12T20:01:02Z",
    "Running" : false,
    "State" : "stopped"
  }
]
`

func TestParseList(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []worker.Instance
		wantErr string
	}{
		{name: "tart's output", in: listExample, want: []worker.Instance{
			{Name: "orchard-vm-1-0", Running: true}, {Name: "orchard-vm-2-0"}}},
		{name: "empty, Apple style", in: "[\n\n]\n", want: []worker.Instance{}},
		{name: "escaped slash in a local name is decoded",
			in:   `[{"Source":"local","Name":"orchard-a\/b","Running":false,"State":"stopped"}]`,
			want: []worker.Instance{{Name: "orchard-a/b"}}},
		{name: "State when Running is absent",
			in:   `[{"Source":"local","Name":"orchard-x","State":"running"}]`,
			want: []worker.Instance{{Name: "orchard-x", Running: true}}},
		{name: "Running wins over State",
			in:   `[{"Name":"orchard-x","Running":false,"State":"running"}]`,
			want: []worker.Instance{{Name: "orchard-x"}}},
		{name: "entry without a name", in: `[{"Source":"local","Running":true}]`, wantErr: "entry 0 has no Name"},
		{name: "not a list", in: `{"Name":"orchard-x"}`, wantErr: "parse tart list output"},
		{name: "text format", in: "Source Name Disk Size Accessed State\nlocal orchard-x 50 24 now stopped\n", wantErr: "parse tart list output"},
		{name: "wrong type", in: `[{"Name":"orchard-x","Running":"yes"}]`, wantErr: "parse tart list output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseList([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseList = %v, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseList = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseList(f *testing.F) {
	f.Add([]byte(listExample))
	f.Add([]byte("[\n\n]\n"))
	f.Add([]byte("null"))
	f.Add([]byte(`[{"Name":"orchard-\u00e9","Running":true}]`))
	f.Add([]byte(`[{"Name":"","Source":"OCI"}]`))
	f.Add([]byte(`[{"name":"orchard-lower","state":"running"}]`))
	f.Add([]byte(`[1, "two", null]`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseList(data)
		if err != nil {
			if got != nil {
				t.Fatalf("parseList returned %v with error %v", got, err)
			}
			return
		}
		for _, inst := range got {
			if !strings.HasPrefix(inst.Name, namePrefix) {
				t.Fatalf("parseList kept %q, which is not ours", inst.Name)
			}
		}
		// What parses is a JSON list, and at most one instance comes of
		// each element.
		var raw []json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatalf("parseList accepted what is not a JSON list: %v", err)
		}
		if len(got) > len(raw) {
			t.Fatalf("parseList made %d instances of %d entries", len(got), len(raw))
		}
	})
}
