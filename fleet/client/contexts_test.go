package client

import (
	"os"
	"strings"
	"sync"
	"testing"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

func TestContextsFile(t *testing.T) {
	home := t.TempDir()
	path := ContextsPath(home)
	pem := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	prod := ContextFromToken("https://orchard:6120", v1.BootstrapToken{ServiceAccountName: "admin", ServiceAccountToken: "t1", CertificatePEM: pem})
	if err := SaveContext(path, "prod", prod, false); err != nil {
		t.Fatal(err)
	}
	if err := SaveContext(path, "dev", Context{URL: "http://127.0.0.1:6120", ServiceAccountName: "a", ServiceAccountToken: "t2"}, false); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("contexts file mode = %v, %v; want 0600 (it holds tokens)", info.Mode().Perm(), err)
	}
	b, _ := os.ReadFile(path)
	for _, key := range []string{"default-context: prod", "serviceAccountName: admin", "certificate:"} {
		if !strings.Contains(string(b), key) {
			t.Errorf("file lacks %q (Orchard's layout):\n%s", key, b)
		}
	}

	tests := []struct {
		name, context string
		env           []string
		wantURL       string
		wantUser      string
		wantPinned    bool
		wantErr       string
	}{
		{name: "default", wantURL: "https://orchard:6120", wantUser: "admin", wantPinned: true},
		{name: "named", context: "dev", wantURL: "http://127.0.0.1:6120", wantUser: "a"},
		{name: "env overrides credentials", env: []string{EnvServiceAccountName + "=ci", EnvServiceAccountToken + "=x"}, wantURL: "https://orchard:6120", wantUser: "ci", wantPinned: true},
		{name: "env URL drops the pin of another URL", env: []string{EnvURL + "=https://elsewhere:6120"}, wantURL: "https://elsewhere:6120", wantUser: "admin"},
		{name: "unknown context", context: "nope", wantErr: `no context named "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Resolve(home, tt.context, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.URL != tt.wantURL || cfg.ServiceAccountName != tt.wantUser || (len(cfg.CertificatePEM) > 0) != tt.wantPinned {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
	if _, err := Resolve(t.TempDir(), "", nil); err == nil || !strings.Contains(err.Error(), "orchard dev") {
		t.Errorf("no contexts at all: %v, want advice", err)
	}
}

func TestConcurrentUpdatesKeepEveryContext(t *testing.T) {
	path := ContextsPath(t.TempDir())
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if err := SaveContext(path, string(rune('a'+i)), Context{URL: "http://x"}, false); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	f, err := LoadContexts(path)
	if err != nil || len(f.Contexts) != 20 {
		t.Errorf("%d contexts survived 20 concurrent saves, %v", len(f.Contexts), err)
	}
}

func TestNormalizeURL(t *testing.T) {
	for in, want := range map[string]string{
		"orchard":                  "https://orchard:6120",
		"orchard:7000":             "https://orchard:7000",
		"http://127.0.0.1":         "http://127.0.0.1:6120",
		"https://orchard.example/": "https://orchard.example:6120",
		"https://[::1]:6120":       "https://[::1]:6120",
	} {
		if got, err := NormalizeURL(in); err != nil || got != want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://x", "https://", "://"} {
		if _, err := NormalizeURL(bad); err == nil {
			t.Errorf("NormalizeURL(%q) accepted", bad)
		}
	}
}

func TestPinnedTLSConfig(t *testing.T) {
	if _, err := PinnedTLSConfig([]byte("not a certificate")); err == nil {
		t.Error("accepted garbage as a certificate")
	}
	if _, err := New(Config{URL: "http://x:1", CertificatePEM: []byte("x")}); err == nil {
		t.Error("pinned a certificate on an http:// URL")
	}
	if _, err := New(Config{URL: "x"}); err == nil {
		t.Error("accepted a URL without a scheme")
	}
}
