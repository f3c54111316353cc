package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// The types below exercise what sections to come will use (integers,
// floats, booleans, lists of values, lists of structs with element defaults
// and validation) through the same load path as Config.

type testRoot struct {
	Server     testServer     `config:"server"`
	Autoscaler testAutoscaler `config:"autoscaler"`
}

type testServer struct {
	Name    string        `config:"name"`
	Port    uint16        `config:"port"`
	Workers int           `config:"workers"`
	Ratio   float64       `config:"ratio"`
	Debug   bool          `config:"debug"`
	Tags    []string      `config:"tags"`
	Timeout time.Duration `config:"timeout"`
}

type testAutoscaler struct {
	Pools []testPool `config:"pools"`
}

type testPool struct {
	Name     string       `config:"name"`
	Labels   []string     `config:"labels"`
	CPU      int          `config:"cpu"`
	Timeouts testTimeouts `config:"timeouts"`
}

type testTimeouts struct {
	Boot time.Duration `config:"boot"`
	Job  time.Duration `config:"job"`
}

func (p *testPool) applyDefaults() {
	p.CPU = 4
	p.Timeouts = testTimeouts{Boot: 10 * time.Minute, Job: 6 * time.Hour}
}

func (p testPool) validate(check checks) {
	if p.Name == "" {
		check.fail("name", "must be set")
	}
	if p.CPU < 1 {
		check.fail("cpu", "must be at least 1, got %d", p.CPU)
	}
}

func (t testTimeouts) validate(check checks) {
	if t.Boot <= 0 {
		check.fail("boot", "must be more than 0")
	}
}

func testDefaults() testRoot {
	return testRoot{Server: testServer{Name: "s", Port: 80, Tags: []string{"a", "b"}, Timeout: time.Second}}
}

func loadTest(t *testing.T, c loadCase) (testRoot, Source, error) {
	t.Helper()
	src := Source{Env: c.env}
	if c.file != nil {
		src.File = writeConfig(t, *c.file)
	}
	var got testRoot
	err := load(src, reflect.ValueOf(testDefaults()), reflect.ValueOf(&got).Elem())
	return got, src, err
}

const poolsFile = `
server:
  port: 8080
  workers: -3
  ratio: 0.25
  debug: true
  tags: [x, "y z"]
  timeout: 1m
autoscaler:
  pools:
    - &base
      name: first
      labels: [orchard-macos]
      cpu: 8
    - <<: *base
      name: second
      cpu: 2
      timeouts: {job: 1h}
    - name: third
`

func TestLoadFieldTypes(t *testing.T) {
	defaults := testDefaults()
	tests := []struct {
		name string
		loadCase
		want testRoot
	}{
		{name: "defaults, lists included", want: defaults},
		{
			name:     "an empty list replaces a default one",
			loadCase: loadCase{file: text("server:\n  tags: []\n")},
			want:     testRoot{Server: testServer{Name: "s", Port: 80, Timeout: time.Second}},
		},
		{
			name:     "every type, merge keys and element defaults",
			loadCase: loadCase{file: text(poolsFile)},
			want: testRoot{
				Server: testServer{Name: "s", Port: 8080, Workers: -3, Ratio: 0.25, Debug: true, Tags: []string{"x", "y z"}, Timeout: time.Minute},
				Autoscaler: testAutoscaler{Pools: []testPool{
					{Name: "first", Labels: []string{"orchard-macos"}, CPU: 8, Timeouts: testTimeouts{Boot: 10 * time.Minute, Job: 6 * time.Hour}},
					{Name: "second", Labels: []string{"orchard-macos"}, CPU: 2, Timeouts: testTimeouts{Boot: 10 * time.Minute, Job: time.Hour}},
					{Name: "third", CPU: 4, Timeouts: testTimeouts{Boot: 10 * time.Minute, Job: 6 * time.Hour}},
				}},
			},
		},
		{
			name: "the first of several merged mappings wins, the mapping's own keys win over all",
			loadCase: loadCase{file: text(
				"autoscaler:\n  pools:\n    - <<: [{name: a, cpu: 1}, {name: b, cpu: 2, labels: [l]}]\n      cpu: 3\n")},
			want: testRoot{Server: defaults.Server, Autoscaler: testAutoscaler{Pools: []testPool{
				{Name: "a", Labels: []string{"l"}, CPU: 3, Timeouts: testTimeouts{Boot: 10 * time.Minute, Job: 6 * time.Hour}},
			}}},
		},
		{
			name: "env sets scalars of every type",
			loadCase: loadCase{env: []string{
				"ORCHARD_SERVER_PORT=65535", "ORCHARD_SERVER_WORKERS=12", "ORCHARD_SERVER_RATIO=1e-3",
				"ORCHARD_SERVER_DEBUG=false", "ORCHARD_SERVER_TIMEOUT=2h", "ORCHARD_SERVER_NAME=n",
			}},
			want: testRoot{Server: testServer{Name: "n", Port: 65535, Workers: 12, Ratio: 0.001, Tags: []string{"a", "b"}, Timeout: 2 * time.Hour}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, _, err := loadTest(t, tt.loadCase)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("load =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestLoadFieldTypeErrors(t *testing.T) {
	tests := []struct {
		name string
		loadCase
		want string // $FILE stands for the file's path
	}{
		{
			name:     "unsigned out of range",
			loadCase: loadCase{file: text("server:\n  port: 65536\n")},
			want:     `config $FILE:2: server.port: "65536" is out of range`,
		},
		{
			name:     "negative unsigned",
			loadCase: loadCase{env: []string{"ORCHARD_SERVER_PORT=-1"}},
			want:     `env ORCHARD_SERVER_PORT: server.port: "-1" is not a whole number of 0 or more`,
		},
		{
			name:     "integers are decimal",
			loadCase: loadCase{file: text("server:\n  workers: 0x10\n")},
			want:     `config $FILE:2: server.workers: "0x10" is not a whole number`,
		},
		{
			name:     "not a number",
			loadCase: loadCase{file: text("server:\n  ratio: half\n")},
			want:     `config $FILE:2: server.ratio: "half" is not a number`,
		},
		{
			name:     "not a finite number",
			loadCase: loadCase{env: []string{"ORCHARD_SERVER_RATIO=NaN"}},
			want:     `env ORCHARD_SERVER_RATIO: server.ratio: "NaN" is not a finite number`,
		},
		{
			name:     "YAML 1.1 booleans are not booleans",
			loadCase: loadCase{file: text("server:\n  debug: yes\n")},
			want:     `config $FILE:2: server.debug: "yes" is not a boolean (want true or false)`,
		},
		{
			name:     "a mapping where a number belongs",
			loadCase: loadCase{file: text("server:\n  workers: {n: 1}\n")},
			want:     `config $FILE:2: server.workers: want a whole number, got a mapping`,
		},
		{
			name:     "a value where a list belongs",
			loadCase: loadCase{file: text("server:\n  tags: x\n")},
			want:     `config $FILE:2: server.tags: want a list, got a single value`,
		},
		{
			name:     "a mapping in a list of values",
			loadCase: loadCase{file: text("server:\n  tags:\n    - ok\n    - {k: v}\n")},
			want:     `config $FILE:4: server.tags[1]: want a string, got a mapping`,
		},
		{
			name:     "a null list element",
			loadCase: loadCase{file: text("autoscaler:\n  pools:\n    - name: a\n    - ~\n")},
			want:     `config $FILE:4: autoscaler.pools[1]: want a mapping of keys, got null`,
		},
		{
			name:     "unknown key in a list element",
			loadCase: loadCase{file: text("autoscaler:\n  pools:\n    - name: a\n      cpus: 2\n")},
			want:     `config $FILE:4: unknown key "autoscaler.pools[0].cpus" (did you mean "autoscaler.pools[0].cpu"?)`,
		},
		{
			name:     "merging a value",
			loadCase: loadCase{file: text("autoscaler:\n  pools:\n    - name: a\n      <<: 5\n")},
			want:     `config $FILE:4: << merges a mapping or a list of mappings, not a single value`,
		},
		{
			name:     "a list of lists merged",
			loadCase: loadCase{file: text("autoscaler:\n  pools:\n    - <<: [[a]]\n")},
			want:     `config $FILE:3: << merges a mapping or a list of mappings, not a list of lists`,
		},
		{
			name:     "a list from env",
			loadCase: loadCase{env: []string{"ORCHARD_SERVER_TAGS=a,b", "ORCHARD_AUTOSCALER_POOLS=[]"}},
			want: `env ORCHARD_AUTOSCALER_POOLS: autoscaler.pools is a list; set it in the config file` + "\n" +
				`env ORCHARD_SERVER_TAGS: server.tags is a list; set it in the config file`,
		},
		{
			name: "element validation names the element's key and line",
			loadCase: loadCase{file: text(
				"autoscaler:\n  pools:\n    - name: a\n    - labels: [x]\n    - name: c\n      cpu: 0\n      timeouts:\n        boot: 0s\n")},
			want: `config $FILE:4: autoscaler.pools[1].name: must be set` + "\n" +
				`config $FILE:6: autoscaler.pools[2].cpu: must be at least 1, got 0` + "\n" +
				`config $FILE:8: autoscaler.pools[2].timeouts.boot: must be more than 0`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, src, err := loadTest(t, tt.loadCase)
			want := strings.ReplaceAll(tt.want, "$FILE", src.File)
			if err == nil || err.Error() != want {
				t.Fatalf("load error =\n%v\nwant\n%s", err, want)
			}
		})
	}
}

// TestStructMistakes checks that a section without tags, of an unsupported
// type, or with keys that share a variable fails loudly on first use.
func TestStructMistakes(t *testing.T) {
	type untagged struct{ Listen string }
	type badType struct {
		M map[string]string `config:"m"`
	}
	type clash struct {
		A struct {
			BC string `config:"b_c"`
		} `config:"a"`
		AB struct {
			C string `config:"c"`
		} `config:"a_b"`
	}
	tests := []struct {
		name string
		root any
		want string
	}{
		{"untagged", &struct {
			S untagged `config:"s"`
		}{}, "config: field untagged.Listen needs an exported name and a `config` tag"},
		{"unsupported type", &struct {
			S badType `config:"s"`
		}{}, "config: field badType.M has unsupported type map[string]string"},
		{"shared variable", &clash{}, `config: keys "a.b_c" and "a_b.c" both map to ORCHARD_A_B_C`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if got := recover(); got != tt.want {
					t.Errorf("panic = %v, want %q", got, tt.want)
				}
			}()
			dst := reflect.ValueOf(tt.root).Elem()
			_ = load(Source{}, reflect.New(dst.Type()).Elem(), dst)
		})
	}
}

func TestNearest(t *testing.T) {
	keys := []string{"listen", "data_dir", "tls", "metrics_listen", "worker_offline_timeout", "restart_delay"}
	tests := []struct{ name, want string }{
		{"listn", "listen"},
		{"Listen", "listen"},
		{"datadir", "data_dir"},
		{"metric_listen", "metrics_listen"},
		{"worker_ofline_timeout", "worker_offline_timeout"},
		{"restart", ""},
		{"x", ""},
		{"tsl", "tls"},
	}
	for _, tt := range tests {
		if got := nearest(tt.name, keys); got != tt.want {
			t.Errorf("nearest(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
