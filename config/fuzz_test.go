package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoadFile feeds arbitrary bytes as config.yaml. Load must not panic, and
// must either return a Config that passes Validate or an error every line of
// which names the file.
func FuzzLoadFile(f *testing.F) {
	example, err := os.ReadFile("config.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	seeds := []string{
		string(example),
		fullFile,
		poolsFile,
		"",
		"~",
		"controller: 5\n",
		"controller:\n  listn: :6120\n",
		"controller:\n  worker_offline_timeout: 3 minutes\n",
		"controller:\n  tls: {cert_file: a}\n",
		"log: {level: verbose, format: xml}\n",
		"controller:\n\tlisten: x\n",
		"log:\n  level: info\n  level: debug\n",
		"a: 1\n---\nb: 2\n",
		"controller: &c\n  tls: *c\n",
		"controller: {<<: [{listen: ':1'}, {listen: ':2'}], restart_delay: 0s}\n",
		"controller: {<<: 5}\n",
		"? [a]\n: b\n",
		"a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
		"\xef\xbb\xbfcontroller:\n  listen: '[::1]:0'\n",
		"controller:\n  listen: \"\\x00:1\"\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(Source{File: path})
		if err != nil {
			if cfg != (Config{}) {
				t.Errorf("Load returned %+v with error %v", cfg, err)
			}
			for line := range strings.SplitSeq(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config "+path+":") {
					t.Errorf("error line %q does not name the file %s", line, path)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Load returned a config that fails Validate: %v", err)
		}
	})
}
