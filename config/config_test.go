package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// testFlags is the flag set a command might define, with the mapping it
// would pass as Source.FlagKeys.
func testFlags(t *testing.T, args ...string) (*pflag.FlagSet, map[string]string) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.String("listen", ":9999", "") // a flag default that must not apply unless set
	fs.String("data-dir", "", "")
	fs.String("tls-cert", "", "")
	fs.String("tls-key", "", "")
	fs.Duration("worker-offline-timeout", time.Hour, "")
	fs.String("restart-delay", "", "") // a string flag: its text is parsed as a duration
	fs.String("log-level", "", "")
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse flags %q: %v", args, err)
	}
	return fs, map[string]string{
		"listen":                 "controller.listen",
		"data-dir":               "controller.data_dir",
		"tls-cert":               "controller.tls.cert_file",
		"tls-key":                "controller.tls.key_file",
		"worker-offline-timeout": "controller.worker_offline_timeout",
		"restart-delay":          "controller.restart_delay",
		"log-level":              "log.level",
	}
}

// writeConfig writes content to a fresh config.yaml and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadCase describes one Load call: the file's content (none when nil), the
// environment and the command-line arguments.
type loadCase struct {
	file  *string
	env   []string
	args  []string
	flags bool // pass the flag set even when args is empty
}

func (c loadCase) source(t *testing.T) Source {
	t.Helper()
	var src Source
	if c.file != nil {
		src.File = writeConfig(t, *c.file)
	}
	src.Env = c.env
	if c.args != nil || c.flags {
		src.Flags, src.FlagKeys = testFlags(t, c.args...)
	}
	return src
}

func text(s string) *string { return &s }

const fullFile = `
controller:
  listen: 127.0.0.1:7000
  data_dir: /var/lib/orchard
  tls:
    cert_file: /etc/orchard/tls.crt
    key_file: /etc/orchard/tls.key
  metrics_listen: ":9090"
  worker_offline_timeout: 90s
  restart_delay: 0s
log:
  level: debug
  format: json
`

func TestLoad(t *testing.T) {
	fromFile := Config{
		Controller: Controller{
			Listen:               "127.0.0.1:7000",
			DataDir:              "/var/lib/orchard",
			TLS:                  TLS{CertFile: "/etc/orchard/tls.crt", KeyFile: "/etc/orchard/tls.key"},
			MetricsListen:        ":9090",
			WorkerOfflineTimeout: 90 * time.Second,
			RestartDelay:         0,
		},
		Log: Log{Level: "debug", Format: "json"},
	}
	with := func(base Config, change func(*Config)) Config {
		change(&base)
		return base
	}

	tests := []struct {
		name string
		loadCase
		want Config
	}{
		{name: "no sources: defaults", want: Default()},
		{name: "unset flags do not apply", loadCase: loadCase{flags: true}, want: Default()},
		{name: "empty file", loadCase: loadCase{file: text("")}, want: Default()},
		{name: "comments only", loadCase: loadCase{file: text("# nothing yet\n")}, want: Default()},
		{name: "null document", loadCase: loadCase{file: text("~\n")}, want: Default()},
		{name: "file sets every key", loadCase: loadCase{file: text(fullFile)}, want: fromFile},
		{
			name:     "file sets some keys, the rest default",
			loadCase: loadCase{file: text("log:\n  level: warn\n")},
			want:     with(Default(), func(c *Config) { c.Log.Level = "warn" }),
		},
		{
			name:     "null values and empty sections mean unset",
			loadCase: loadCase{file: text("controller:\n  listen:\n  restart_delay: ~\nlog:\n")},
			want:     Default(),
		},
		{
			name: "YAML scalars are taken as written",
			loadCase: loadCase{file: text(
				"controller:\n  listen: '[::1]:6120'\n  data_dir: 0755\n  worker_offline_timeout: \"1h\"\n")},
			want: with(Default(), func(c *Config) {
				c.Controller.Listen = "[::1]:6120"
				c.Controller.DataDir = "0755"
				c.Controller.WorkerOfflineTimeout = time.Hour
			}),
		},
		{
			name: "anchors and aliases",
			loadCase: loadCase{file: text(
				"controller:\n  tls:\n    cert_file: &pem /etc/orchard/both.pem\n    key_file: *pem\n")},
			want: with(Default(), func(c *Config) {
				c.Controller.TLS = TLS{CertFile: "/etc/orchard/both.pem", KeyFile: "/etc/orchard/both.pem"}
			}),
		},
		{
			name: "env only",
			loadCase: loadCase{env: []string{
				"ORCHARD_CONTROLLER_LISTEN=0.0.0.0:6121",
				"ORCHARD_CONTROLLER_DATA_DIR=/data",
				"ORCHARD_CONTROLLER_TLS_CERT_FILE=/c.pem",
				"ORCHARD_CONTROLLER_TLS_KEY_FILE=/k.pem",
				"ORCHARD_CONTROLLER_METRICS_LISTEN=localhost:9100",
				"ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT=10m",
				"ORCHARD_CONTROLLER_RESTART_DELAY=1m30s",
				"ORCHARD_LOG_LEVEL=error",
				"ORCHARD_LOG_FORMAT=json",
			}},
			want: Config{
				Controller: Controller{
					Listen: "0.0.0.0:6121", DataDir: "/data", TLS: TLS{CertFile: "/c.pem", KeyFile: "/k.pem"},
					MetricsListen: "localhost:9100", WorkerOfflineTimeout: 10 * time.Minute, RestartDelay: 90 * time.Second,
				},
				Log: Log{Level: "error", Format: "json"},
			},
		},
		{
			name: "env overrides file",
			loadCase: loadCase{
				file: text(fullFile),
				env:  []string{"ORCHARD_CONTROLLER_LISTEN=:7001", "ORCHARD_CONTROLLER_TLS_KEY_FILE=/other.key", "ORCHARD_LOG_FORMAT=text"},
			},
			want: with(fromFile, func(c *Config) {
				c.Controller.Listen = ":7001"
				c.Controller.TLS.KeyFile = "/other.key"
				c.Log.Format = "text"
			}),
		},
		{
			name: "flags override env and file",
			loadCase: loadCase{
				file: text(fullFile),
				env:  []string{"ORCHARD_CONTROLLER_LISTEN=:7001", "ORCHARD_LOG_LEVEL=warn", "ORCHARD_CONTROLLER_RESTART_DELAY=5s"},
				args: []string{"--listen", "127.0.0.2:7002", "--worker-offline-timeout", "5m", "--restart-delay", "1s"},
			},
			want: with(fromFile, func(c *Config) {
				c.Controller.Listen = "127.0.0.2:7002"              // flag over env over file
				c.Log.Level = "warn"                                // env over file
				c.Controller.WorkerOfflineTimeout = 5 * time.Minute // flag over file
				c.Controller.RestartDelay = time.Second             // flag over env
			}),
		},
		{
			name:     "a flag set to empty applies",
			loadCase: loadCase{file: text(fullFile), args: []string{"--data-dir="}},
			want:     with(fromFile, func(c *Config) { c.Controller.DataDir = "" }),
		},
		{
			name: "an out-of-range file value overridden by env is fine",
			loadCase: loadCase{
				file: text("controller:\n  worker_offline_timeout: 0s\n"),
				env:  []string{"ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT=1m"},
			},
			want: with(Default(), func(c *Config) { c.Controller.WorkerOfflineTimeout = time.Minute }),
		},
		{
			name: "client variables, other ORCHARD_ prefixes and other variables are ignored",
			loadCase: loadCase{env: []string{
				"ORCHARD_HOME=/home/ci",
				"ORCHARD_URL=https://orchard.example:6120",
				"ORCHARD_SERVICE_ACCOUNT_NAME=ci",
				"ORCHARD_SERVICE_ACCOUNT_TOKEN=secret",
				"ORCHARD_BOOTSTRAP_ADMIN_TOKEN=secret",
				"ORCHARD_CONFIG=/etc/orchard/config.yaml",
				"ORCHARD_GITHUB_APP_ID=123",
				"ORCHARD_RUNNER_NAME=x",
				"ORCHARD_=x",
				"ORCHARD_CONTROLLERX=1",
				"CONTROLLER_LISTEN=nonsense",
				"orchard_log_level=nonsense",
				"PATH=/usr/bin",
				"NOEQUALS",
			}},
			want: Default(),
		},
		{
			name:     "empty variables are unset",
			loadCase: loadCase{file: text(fullFile), env: []string{"ORCHARD_CONTROLLER_LISTEN=", "ORCHARD_LOG_LEVEL="}},
			want:     fromFile,
		},
		{
			name:     "the last of duplicate variables wins",
			loadCase: loadCase{env: []string{"ORCHARD_LOG_LEVEL=verbose", "ORCHARD_LOG_LEVEL=debug"}},
			want:     with(Default(), func(c *Config) { c.Log.Level = "debug" }),
		},
		{
			name:     "listen addresses",
			loadCase: loadCase{env: []string{"ORCHARD_CONTROLLER_LISTEN=[fe80::1%eth0]:0", "ORCHARD_CONTROLLER_METRICS_LISTEN=orchard-controller.svc.local.:9090"}},
			want: with(Default(), func(c *Config) {
				c.Controller.Listen = "[fe80::1%eth0]:0"
				c.Controller.MetricsListen = "orchard-controller.svc.local.:9090"
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Load(tt.source(t))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got != tt.want {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		loadCase
		// want is the whole error text, one problem a line; $FILE stands for
		// the config file's path.
		want string
		// wantSource and wantKey are those of the first *Error.
		wantSource, wantKey string
	}{
		// Unknown keys, at any depth.
		{
			name:       "unknown key in a section",
			loadCase:   loadCase{file: text("controller:\n  listn: :6120\n")},
			want:       `config $FILE:2: unknown key "controller.listn" (did you mean "controller.listen"?)`,
			wantSource: "config $FILE:2", wantKey: "controller.listn",
		},
		{
			name:       "unknown key two levels down",
			loadCase:   loadCase{file: text("controller:\n  tls:\n    cert: a.pem\n")},
			want:       `config $FILE:3: unknown key "controller.tls.cert"`,
			wantSource: "config $FILE:3", wantKey: "controller.tls.cert",
		},
		{
			name:       "unknown section",
			loadCase:   loadCase{file: text("log:\n  level: info\ncontroler:\n  listen: :1\n")},
			want:       `config $FILE:3: unknown key "controler" (did you mean "controller"?)`,
			wantSource: "config $FILE:3", wantKey: "controler",
		},
		{
			name:       "keys are case-sensitive",
			loadCase:   loadCase{file: text("log:\n  Level: info\n")},
			want:       `config $FILE:2: unknown key "log.Level" (did you mean "log.level"?)`,
			wantSource: "config $FILE:2", wantKey: "log.Level",
		},
		{
			name:     "every problem is reported, in line order",
			loadCase: loadCase{file: text("log:\n  zzz: 1\n  format: fancy\ncontroller:\n  restart_delay: soon\n  aaa: 2\n")},
			want: `config $FILE:2: unknown key "log.zzz"` + "\n" +
				`config $FILE:5: controller.restart_delay: "soon" is not a duration (e.g. 90s, 3m)` + "\n" +
				`config $FILE:6: unknown key "controller.aaa"`,
			wantSource: "config $FILE:2", wantKey: "log.zzz",
		},

		// Wrong types.
		{
			name:       "a value where a section belongs",
			loadCase:   loadCase{file: text("controller: 5\n")},
			want:       `config $FILE:1: controller: want a mapping of keys, got a single value`,
			wantSource: "config $FILE:1", wantKey: "controller",
		},
		{
			name:       "a list where a value belongs",
			loadCase:   loadCase{file: text("controller:\n  listen: [a, b]\n")},
			want:       `config $FILE:2: controller.listen: want a string, got a list`,
			wantSource: "config $FILE:2", wantKey: "controller.listen",
		},
		{
			name:       "a mapping where a duration belongs",
			loadCase:   loadCase{file: text("controller:\n  restart_delay: {seconds: 5}\n")},
			want:       `config $FILE:2: controller.restart_delay: want a duration, got a mapping`,
			wantSource: "config $FILE:2", wantKey: "controller.restart_delay",
		},
		{
			name:       "a value where the TLS section belongs",
			loadCase:   loadCase{file: text("controller:\n  tls: /etc/tls.pem\n")},
			want:       `config $FILE:2: controller.tls: want a mapping of keys, got a single value`,
			wantSource: "config $FILE:2", wantKey: "controller.tls",
		},
		{
			name:       "a list at the top",
			loadCase:   loadCase{file: text("- controller\n")},
			want:       `config $FILE:1: want a mapping of sections (controller:, log:, ...) at the top, got a list`,
			wantSource: "config $FILE:1",
		},

		// Durations.
		{
			name:       "unparsable duration in the file",
			loadCase:   loadCase{file: text("controller:\n  listen: :6120\n  worker_offline_timeout: 3 minutes\n")},
			want:       `config $FILE:3: controller.worker_offline_timeout: "3 minutes" is not a duration (e.g. 90s, 3m)`,
			wantSource: "config $FILE:3", wantKey: "controller.worker_offline_timeout",
		},
		{
			name:       "a bare number is not a duration",
			loadCase:   loadCase{file: text("controller:\n  restart_delay: 15\n")},
			want:       `config $FILE:2: controller.restart_delay: "15" is not a duration (e.g. 90s, 3m)`,
			wantSource: "config $FILE:2", wantKey: "controller.restart_delay",
		},
		{
			name:       "unparsable duration in env",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_RESTART_DELAY=15 s"}},
			want:       `env ORCHARD_CONTROLLER_RESTART_DELAY: controller.restart_delay: "15 s" is not a duration (e.g. 90s, 3m)`,
			wantSource: "env ORCHARD_CONTROLLER_RESTART_DELAY", wantKey: "controller.restart_delay",
		},
		{
			name:       "unparsable duration in a flag",
			loadCase:   loadCase{args: []string{"--restart-delay=later"}},
			want:       `flag --restart-delay: controller.restart_delay: "later" is not a duration (e.g. 90s, 3m)`,
			wantSource: "flag --restart-delay", wantKey: "controller.restart_delay",
		},
		{
			name: "a malformed file value is an error even when env overrides it",
			loadCase: loadCase{
				file: text("controller:\n  restart_delay: 15 seconds\n"),
				env:  []string{"ORCHARD_CONTROLLER_RESTART_DELAY=15s"},
			},
			want:       `config $FILE:2: controller.restart_delay: "15 seconds" is not a duration (e.g. 90s, 3m)`,
			wantSource: "config $FILE:2", wantKey: "controller.restart_delay",
		},
		{
			name:       "zero worker_offline_timeout in the file",
			loadCase:   loadCase{file: text("controller:\n  worker_offline_timeout: 0s\n")},
			want:       `config $FILE:2: controller.worker_offline_timeout: must be more than 0, got 0s (e.g. 3m)`,
			wantSource: "config $FILE:2", wantKey: "controller.worker_offline_timeout",
		},
		{
			name:       "negative worker_offline_timeout in env",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT=-1m"}},
			want:       `env ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT: controller.worker_offline_timeout: must be more than 0, got -1m0s (e.g. 3m)`,
			wantSource: "env ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT", wantKey: "controller.worker_offline_timeout",
		},
		{
			name:       "negative restart_delay in a flag",
			loadCase:   loadCase{file: text("controller:\n  restart_delay: 1s\n"), args: []string{"--restart-delay", "-1s"}},
			want:       `flag --restart-delay: controller.restart_delay: must be 0 or more, got -1s (e.g. 15s)`,
			wantSource: "flag --restart-delay", wantKey: "controller.restart_delay",
		},

		// Log level and format.
		{
			name:       "unknown log level in env",
			loadCase:   loadCase{env: []string{"ORCHARD_LOG_LEVEL=verbose"}},
			want:       `env ORCHARD_LOG_LEVEL: log.level: unknown log level "verbose" (want debug, info, warn or error)`,
			wantSource: "env ORCHARD_LOG_LEVEL", wantKey: "log.level",
		},
		{
			name:       "log levels are lower case",
			loadCase:   loadCase{args: []string{"--log-level", "INFO"}},
			want:       `flag --log-level: log.level: unknown log level "INFO" (want debug, info, warn or error)`,
			wantSource: "flag --log-level", wantKey: "log.level",
		},
		{
			name:       "unknown log format in the file",
			loadCase:   loadCase{file: text("log:\n  format: logfmt\n")},
			want:       `config $FILE:2: log.format: unknown log format "logfmt" (want text or json)`,
			wantSource: "config $FILE:2", wantKey: "log.format",
		},

		// Listen addresses.
		{
			name:       "listen without a host part",
			loadCase:   loadCase{file: text("controller:\n  listen: 6120\n")},
			want:       `config $FILE:2: controller.listen: "6120" is not host:port (e.g. :6120 or 127.0.0.1:6120)`,
			wantSource: "config $FILE:2", wantKey: "controller.listen",
		},
		{
			name:       "listen without a port in env",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_LISTEN=localhost"}},
			want:       `env ORCHARD_CONTROLLER_LISTEN: controller.listen: "localhost" is not host:port (e.g. :6120 or 127.0.0.1:6120)`,
			wantSource: "env ORCHARD_CONTROLLER_LISTEN", wantKey: "controller.listen",
		},
		{
			name:       "listen with a port out of range in a flag",
			loadCase:   loadCase{args: []string{"--listen", "127.0.0.1:65536"}},
			want:       `flag --listen: controller.listen: "127.0.0.1:65536" has port "65536" (want a number from 0 to 65535)`,
			wantSource: "flag --listen", wantKey: "controller.listen",
		},
		{
			name:       "listen with a named port",
			loadCase:   loadCase{args: []string{"--listen", ":https"}},
			want:       `flag --listen: controller.listen: ":https" has port "https" (want a number from 0 to 65535)`,
			wantSource: "flag --listen", wantKey: "controller.listen",
		},
		{
			name:       "listen given as a URL",
			loadCase:   loadCase{file: text("controller:\n  listen: http://0.0.0.0:6120\n")},
			want:       `config $FILE:2: controller.listen: "http://0.0.0.0:6120" is not host:port (e.g. :6120 or 127.0.0.1:6120)`,
			wantSource: "config $FILE:2", wantKey: "controller.listen",
		},
		{
			name:       "listen with a host that is no host name",
			loadCase:   loadCase{file: text("controller:\n  listen: my host:6120\n")},
			want:       `config $FILE:2: controller.listen: "my host:6120" has host "my host" (want a host name or IP address)`,
			wantSource: "config $FILE:2", wantKey: "controller.listen",
		},
		{
			name:       "listen set to empty by a flag",
			loadCase:   loadCase{args: []string{"--listen="}},
			want:       `flag --listen: controller.listen: "" is not host:port (e.g. :6120 or 127.0.0.1:6120)`,
			wantSource: "flag --listen", wantKey: "controller.listen",
		},
		{
			name:       "metrics_listen that is not host:port",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_METRICS_LISTEN=9090"}},
			want:       `env ORCHARD_CONTROLLER_METRICS_LISTEN: controller.metrics_listen: "9090" is not host:port (e.g. :6120 or 127.0.0.1:6120)`,
			wantSource: "env ORCHARD_CONTROLLER_METRICS_LISTEN", wantKey: "controller.metrics_listen",
		},
		{
			name:       "metrics_listen on the API's address",
			loadCase:   loadCase{file: text("controller:\n  listen: :7000\n  metrics_listen: :7000\n")},
			want:       `config $FILE:3: controller.metrics_listen: ":7000" is the listen address too; give metrics an address of their own`,
			wantSource: "config $FILE:3", wantKey: "controller.metrics_listen",
		},

		// TLS: both or neither.
		{
			name:       "cert_file without key_file",
			loadCase:   loadCase{file: text("controller:\n  tls:\n    cert_file: /tls.crt\n")},
			want:       `config $FILE:3: controller.tls.cert_file: set without key_file (give both cert_file and key_file, or neither for a generated self-signed certificate)`,
			wantSource: "config $FILE:3", wantKey: "controller.tls.cert_file",
		},
		{
			name:       "key_file without cert_file, from env",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_TLS_KEY_FILE=/tls.key"}},
			want:       `env ORCHARD_CONTROLLER_TLS_KEY_FILE: controller.tls.key_file: set without cert_file (give both cert_file and key_file, or neither for a generated self-signed certificate)`,
			wantSource: "env ORCHARD_CONTROLLER_TLS_KEY_FILE", wantKey: "controller.tls.key_file",
		},
		{
			name:       "key_file emptied by a flag",
			loadCase:   loadCase{file: text(fullFile), args: []string{"--tls-key="}},
			want:       `config $FILE:6: controller.tls.cert_file: set without key_file (give both cert_file and key_file, or neither for a generated self-signed certificate)`,
			wantSource: "config $FILE:6", wantKey: "controller.tls.cert_file",
		},

		// Environment variables in known sections must be keys.
		{
			name:       "unknown variable in a known section",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_LISTN=:6120"}},
			want:       `env ORCHARD_CONTROLLER_LISTN: not a key of section "controller" (did you mean ORCHARD_CONTROLLER_LISTEN?)`,
			wantSource: "env ORCHARD_CONTROLLER_LISTN",
		},
		{
			name:       "a section is not a variable",
			loadCase:   loadCase{env: []string{"ORCHARD_CONTROLLER_TLS_=x"}},
			want:       `env ORCHARD_CONTROLLER_TLS_: not a key of section "controller" (known: ORCHARD_CONTROLLER_DATA_DIR, ORCHARD_CONTROLLER_LISTEN, ORCHARD_CONTROLLER_METRICS_LISTEN, ORCHARD_CONTROLLER_RESTART_DELAY, ORCHARD_CONTROLLER_TLS_CERT_FILE, ORCHARD_CONTROLLER_TLS_KEY_FILE, ORCHARD_CONTROLLER_WORKER_OFFLINE_TIMEOUT)`,
			wantSource: "env ORCHARD_CONTROLLER_TLS_",
		},
		{
			name:       "an empty unknown variable is still unknown",
			loadCase:   loadCase{env: []string{"ORCHARD_LOG_FROMAT="}},
			want:       `env ORCHARD_LOG_FROMAT: not a key of section "log" (did you mean ORCHARD_LOG_FORMAT?)`,
			wantSource: "env ORCHARD_LOG_FROMAT",
		},
		{
			name:       "no suggestion for a name far from every key",
			loadCase:   loadCase{env: []string{"ORCHARD_LOG_DESTINATION=stderr"}},
			want:       `env ORCHARD_LOG_DESTINATION: not a key of section "log" (known: ORCHARD_LOG_FORMAT, ORCHARD_LOG_LEVEL)`,
			wantSource: "env ORCHARD_LOG_DESTINATION",
		},
		{
			name: "problems of every source are reported together",
			loadCase: loadCase{
				file: text("log:\n  lvl: debug\n"),
				env:  []string{"ORCHARD_LOG_LEVL=debug", "ORCHARD_CONTROLLER_RESTART_DELAY=x"},
				args: []string{"--worker-offline-timeout=2m", "--restart-delay=y"},
			},
			want: `config $FILE:2: unknown key "log.lvl" (did you mean "log.level"?)` + "\n" +
				`env ORCHARD_LOG_LEVL: not a key of section "log" (did you mean ORCHARD_LOG_LEVEL?)` + "\n" +
				`env ORCHARD_CONTROLLER_RESTART_DELAY: controller.restart_delay: "x" is not a duration (e.g. 90s, 3m)` + "\n" +
				`flag --restart-delay: controller.restart_delay: "y" is not a duration (e.g. 90s, 3m)`,
			wantSource: "config $FILE:2", wantKey: "log.lvl",
		},

		// The file itself.
		{
			name:       "YAML syntax error names the line",
			loadCase:   loadCase{file: text("controller:\n  listen: :6120\n  data_dir /var\n  restart_delay: 1s\n")},
			want:       `config $FILE:3: YAML syntax error: could not find expected ':'`,
			wantSource: "config $FILE:3",
		},
		{
			name:       "YAML tab indentation",
			loadCase:   loadCase{file: text("controller:\n\tlisten: :6120\n")},
			want:       `config $FILE:2: YAML syntax error: found character that cannot start any token`,
			wantSource: "config $FILE:2",
		},
		{
			name:       "duplicate key",
			loadCase:   loadCase{file: text("log:\n  level: info\n  format: text\n  level: debug\n")},
			want:       `config $FILE:4: duplicate key "log.level" (first at line 2)`,
			wantSource: "config $FILE:4",
		},
		{
			name:       "a second document",
			loadCase:   loadCase{file: text("log:\n  level: info\n---\nlog:\n  level: debug\n")},
			want:       `config $FILE:3: a second YAML document starts here; config.yaml holds one`,
			wantSource: "config $FILE:3",
		},
		{
			name:       "a key that is not a name",
			loadCase:   loadCase{file: text("log:\n  ? [level]\n  : info\n")},
			want:       `config $FILE:2: a key must be a plain name, not a list`,
			wantSource: "config $FILE:2",
		},
		{
			name:       "an alias that contains itself",
			loadCase:   loadCase{file: text("controller: &c\n  tls: *c\n")},
			want:       `config $FILE:2: alias *c refers to the value that contains it`,
			wantSource: "config $FILE:2",
		},
		{
			name: "aliases that expand without bound",
			loadCase: loadCase{file: text(
				"a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n" +
					"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n" +
					"e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n")},
			want:       `config $FILE:5: more than 100000 values once aliases are expanded`,
			wantSource: "config $FILE:5",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.source(t)
			got, err := Load(src)
			if err == nil {
				t.Fatalf("Load = %+v, want error %q", got, tt.want)
			}
			if got != (Config{}) {
				t.Errorf("Load returned %+v with its error, want the zero Config", got)
			}
			want := strings.ReplaceAll(tt.want, "$FILE", src.File)
			if err.Error() != want {
				t.Errorf("error =\n%s\nwant\n%s", err, want)
			}
			var first *Error
			if !errors.As(err, &first) {
				t.Fatalf("error %v is not a *config.Error", err)
			}
			if wantSource := strings.ReplaceAll(tt.wantSource, "$FILE", src.File); first.Source != wantSource || first.Key != tt.wantKey {
				t.Errorf("first *Error has Source %q, Key %q; want %q, %q", first.Source, first.Key, wantSource, tt.wantKey)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	huge := filepath.Join(dir, "huge.yaml")
	if err := os.WriteFile(huge, bytes.Repeat([]byte("# padding\n"), maxFileSize/10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"missing file", missing, "config " + missing + ": file does not exist"},
		{"a directory", dir, "config " + dir + ": cannot read: is a directory"},
		{"too large", huge, "config " + huge + ": cannot read: larger than 4 MiB; is this the right file?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(Source{File: tt.path})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Load error = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := Load(Source{File: missing}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap fs.ErrNotExist", err)
	}
}

// TestLoadFlagMistakes covers FlagKeys that do not match the flag set: the
// caller's bug, reported whether or not the flag was given.
func TestLoadFlagMistakes(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.String("listen", "", "")
	fs.String("bind", "", "")
	fs.String("level", "", "")
	fs.StringSlice("dirs", nil, "")
	if err := fs.Parse([]string{"--listen=:1", "--bind=:2"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		keys map[string]string
		want string
	}{
		{"flag not defined", map[string]string{"lisen": "controller.listen"}, `flag --lisen: not defined, yet mapped to controller.listen`},
		{"unknown key", map[string]string{"level": "log.lvl"}, `flag --level: mapped to unknown key "log.lvl"`},
		{"a section is not a key", map[string]string{"level": "log"}, `flag --level: mapped to unknown key "log"`},
		{"two flags for one key", map[string]string{"listen": "controller.listen", "bind": "controller.listen"},
			`flag --listen: controller.listen is also set by flag --bind; give one of them`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(Source{Flags: fs, FlagKeys: tt.keys})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Load error = %v, want %q", err, tt.want)
			}
		})
	}
	// Without a flag set no flag applies, whatever the keys say.
	got, err := Load(Source{FlagKeys: map[string]string{"lisen": "controller.listen"}})
	if err != nil || got != Default() {
		t.Fatalf("Load with nil Flags = %+v, %v; want defaults", got, err)
	}
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestValidateWithoutSources(t *testing.T) {
	c := Default()
	c.Controller.Listen = "nowhere"
	c.Log.Format = "xml"
	want := `controller.listen: "nowhere" is not host:port (e.g. :6120 or 127.0.0.1:6120)` + "\n" +
		`log.format: unknown log format "xml" (want text or json)`
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Fatalf("Validate = %v, want\n%s", err, want)
	}
}

// TestExampleFile keeps config.example.yaml honest: it loads to the defaults
// and mentions every key.
func TestExampleFile(t *testing.T) {
	const path = "config.example.yaml"
	got, err := Load(Source{File: path})
	if err != nil {
		t.Fatalf("Load example: %v", err)
	}
	if got != Default() {
		t.Errorf("example loads as\n%+v\nwant Default()\n%+v", got, Default())
	}
	file, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leavesOf(reflect.TypeFor[Config](), "") {
		if _, ok := rawAt(file.tree, l.key); !ok {
			t.Errorf("config.example.yaml lacks %s", l.key)
		}
	}
	// Each key has a comment line right above it.
	lines := strings.Split(string(mustRead(t, path)), "\n")
	for key, line := range file.lines {
		if !strings.Contains(key, ".") {
			continue // sections
		}
		if above := strings.TrimSpace(lines[line-2]); !strings.HasPrefix(above, "#") {
			t.Errorf("config.example.yaml:%d: %s has no comment above it", line, key)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestSlogLevel(t *testing.T) {
	tests := []struct {
		level string
		want  slog.Level
	}{
		{"debug", slog.LevelDebug},
		{"info", slog.LevelInfo},
		{"warn", slog.LevelWarn},
		{"error", slog.LevelError},
		{"", slog.LevelInfo},
		{"verbose", slog.LevelInfo},
	}
	for _, tt := range tests {
		if got := (Log{Level: tt.level}).SlogLevel(); got != tt.want {
			t.Errorf("Log{Level: %q}.SlogLevel() = %v, want %v", tt.level, got, tt.want)
		}
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		log        Log
		wantLines  int // of the four records logged, one per level
		wantFormat string
	}{
		{Log{Level: "debug", Format: "text"}, 4, "text"},
		{Log{Level: "info", Format: "json"}, 3, "json"},
		{Log{Level: "warn", Format: "text"}, 2, "text"},
		{Log{Level: "error", Format: "json"}, 1, "json"},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		logger := NewLogger(tt.log, &buf)
		logger.Debug("d", "k", 1)
		logger.Info("i", "k", 1)
		logger.Warn("w", "k", 1)
		logger.Error("e", "k", 1)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != tt.wantLines {
			t.Errorf("%+v: %d lines, want %d:\n%s", tt.log, len(lines), tt.wantLines, buf.String())
		}
		for _, line := range lines {
			var record map[string]any
			isJSON := json.Unmarshal([]byte(line), &record) == nil
			if isJSON != (tt.wantFormat == "json") {
				t.Errorf("%+v: line %q is not %s", tt.log, line, tt.wantFormat)
			}
			if !isJSON && !strings.Contains(line, "k=1") {
				t.Errorf("%+v: text line %q lacks k=1", tt.log, line)
			}
		}
	}
}
