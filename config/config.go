package config

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Config is the controller's whole configuration. Each field is a section of
// config.yaml; the `config` tag is its key there and, upper-cased, the middle
// of its ORCHARD_<SECTION>_<KEY> environment variables.
type Config struct {
	Controller Controller `config:"controller"`
	Log        Log        `config:"log"`
}

// Controller configures the controller's servers, storage and worker health.
type Controller struct {
	// Listen is the API's host:port.
	Listen string `config:"listen"`
	// DataDir holds the BadgerDB store; empty means the caller's default
	// ($ORCHARD_HOME/.orchard/controller).
	DataDir string `config:"data_dir"`
	// TLS names the API's certificate; empty means a generated self-signed one.
	TLS TLS `config:"tls"`
	// MetricsListen, when set, serves /metrics without auth on a second address.
	MetricsListen string `config:"metrics_listen"`
	// WorkerOfflineTimeout is how long a worker may be disconnected before it
	// is offline and its VMs fail.
	WorkerOfflineTimeout time.Duration `config:"worker_offline_timeout"`
	// RestartDelay is how long a failed VM with restart_policy OnFailure waits
	// before it goes back to pending.
	RestartDelay time.Duration `config:"restart_delay"`
}

// TLS names a PEM certificate and its key. Both or neither.
type TLS struct {
	CertFile string `config:"cert_file"`
	KeyFile  string `config:"key_file"`
}

// Log configures the controller's log/slog output.
type Log struct {
	Level  string `config:"level"`  // debug, info, warn or error
	Format string `config:"format"` // text or json
}

// Default returns the configuration used for every key no source sets.
func Default() Config {
	return Config{
		Controller: Controller{
			Listen:               ":6120",
			WorkerOfflineTimeout: 3 * time.Minute,
			RestartDelay:         15 * time.Second,
		},
		Log: Log{
			Level:  "info",
			Format: "text",
		},
	}
}

// Validate reports every value that is out of range, each as "key: problem".
// Load already calls it and names where each bad value came from.
func (c Config) Validate() error {
	var found []keyError
	validateValue(reflect.ValueOf(c), "", &found)
	return joinWithSource(found, func(string) string { return "" })
}

func (c Controller) validate(check checks) {
	if err := checkHostPort(c.Listen); err != nil {
		check.fail("listen", "%v", err)
	}
	if c.MetricsListen != "" {
		if err := checkHostPort(c.MetricsListen); err != nil {
			check.fail("metrics_listen", "%v", err)
		} else if c.MetricsListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
			check.fail("metrics_listen", "%q is the listen address too; give metrics an address of their own", c.MetricsListen)
		}
	}
	if c.WorkerOfflineTimeout <= 0 {
		check.fail("worker_offline_timeout", "must be more than 0, got %s (e.g. 3m)", c.WorkerOfflineTimeout)
	}
	if c.RestartDelay < 0 {
		check.fail("restart_delay", "must be 0 or more, got %s (e.g. 15s)", c.RestartDelay)
	}
}

func (t TLS) validate(check checks) {
	const both = "give both cert_file and key_file, or neither for a generated self-signed certificate"
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		check.fail("cert_file", "set without key_file (%s)", both)
	case t.CertFile == "" && t.KeyFile != "":
		check.fail("key_file", "set without cert_file (%s)", both)
	}
}

func (l Log) validate(check checks) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		check.fail("level", "unknown log level %q (want debug, info, warn or error)", l.Level)
	}
	switch l.Format {
	case "text", "json":
	default:
		check.fail("format", "unknown log format %q (want text or json)", l.Format)
	}
}

// SlogLevel is the slog level named by Level; info when Level is not valid
// (Load never returns such a Log).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// NewLogger returns a logger writing to w in l's format (JSON for "json",
// text otherwise) that drops records below l's level.
func NewLogger(l Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: l.SlogLevel()}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkHostPort accepts what net.Listen("tcp", addr) accepts with a numeric
// port: ":6120", "127.0.0.1:6120", "[::1]:0", "localhost:6120".
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. :6120 or 127.0.0.1:6120)", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q has port %q (want a number from 0 to 65535)", addr, port)
	}
	if host != "" && !isHostName(host) {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q has host %q (want a host name or IP address)", addr, host)
		}
	}
	return nil
}

// isHostName reports whether s is made of DNS labels (letters, digits,
// hyphens, underscores) separated by dots.
func isHostName(s string) bool {
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}
