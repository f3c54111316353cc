package client

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Context is one controller the CLI knows, as stored in orchard.yml.
type Context struct {
	URL string `yaml:"url"`
	// Certificate is the base64 of the controller certificate's PEM; when
	// set it is the only certificate trusted for URL.
	Certificate         string `yaml:"certificate,omitempty"`
	ServiceAccountName  string `yaml:"serviceAccountName,omitempty"`
	ServiceAccountToken string `yaml:"serviceAccountToken,omitempty"`
}

// Contexts is the file $ORCHARD_HOME/.orchard/orchard.yml, in Orchard's
// layout.
type Contexts struct {
	DefaultContext string             `yaml:"default-context,omitempty"`
	Contexts       map[string]Context `yaml:"contexts"`
}

// Environment variables the client reads.
const (
	EnvHome                = "ORCHARD_HOME"
	EnvURL                 = "ORCHARD_URL"
	EnvServiceAccountName  = "ORCHARD_SERVICE_ACCOUNT_NAME"
	EnvServiceAccountToken = "ORCHARD_SERVICE_ACCOUNT_TOKEN"
)

// Home returns ORCHARD_HOME from env, or the user's home directory.
func Home(env []string) string {
	if h := lookup(env, EnvHome); h != "" {
		return h
	}
	h, _ := os.UserHomeDir()
	return h
}

// Dir is $ORCHARD_HOME/.orchard, where contexts and default data dirs live.
func Dir(home string) string { return filepath.Join(home, ".orchard") }

// ContextsPath is the contexts file under home.
func ContextsPath(home string) string { return filepath.Join(Dir(home), "orchard.yml") }

func lookup(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// LoadContexts reads the contexts file; a missing file is an empty one.
func LoadContexts(path string) (*Contexts, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Contexts{Contexts: map[string]Context{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read contexts: %w", err)
	}
	f := &Contexts{}
	if err := yaml.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("parse contexts file %s: %w", path, err)
	}
	if f.Contexts == nil {
		f.Contexts = map[string]Context{}
	}
	return f, nil
}

// UpdateContexts changes the contexts file under an exclusive lock, so two
// processes (a controller starting, a user creating a context) do not
// lose each other's change. The file is written atomically, mode 0600:
// it holds tokens.
func UpdateContexts(path string, change func(*Contexts) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lock contexts: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock contexts: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	f, err := LoadContexts(path)
	if err != nil {
		return err
	}
	if err := change(f); err != nil {
		return err
	}
	b, err := yaml.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode contexts: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".orchard.yml-*")
	if err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write contexts: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	return nil
}

// SaveContext stores ctx under name; it becomes the default when makeDefault
// is set or when there is no default yet.
func SaveContext(path, name string, ctx Context, makeDefault bool) error {
	return UpdateContexts(path, func(f *Contexts) error {
		f.Contexts[name] = ctx
		if makeDefault || f.DefaultContext == "" || !hasContext(f, f.DefaultContext) {
			f.DefaultContext = name
		}
		return nil
	})
}

func hasContext(f *Contexts, name string) bool {
	_, ok := f.Contexts[name]
	return ok
}

// ContextFromToken builds a context from a bootstrap token.
func ContextFromToken(controllerURL string, t v1.BootstrapToken) Context {
	ctx := Context{URL: controllerURL, ServiceAccountName: t.ServiceAccountName, ServiceAccountToken: t.ServiceAccountToken}
	if len(t.CertificatePEM) > 0 {
		ctx.Certificate = base64.StdEncoding.EncodeToString(t.CertificatePEM)
	}
	return ctx
}

// Config turns a context into a client configuration.
func (c Context) Config() (Config, error) {
	cfg := Config{URL: c.URL, ServiceAccountName: c.ServiceAccountName, ServiceAccountToken: c.ServiceAccountToken}
	if c.Certificate != "" {
		pemBytes, err := base64.StdEncoding.DecodeString(c.Certificate)
		if err != nil {
			return Config{}, errors.New("the context's certificate is not base64: recreate the context")
		}
		cfg.CertificatePEM = pemBytes
	}
	return cfg, nil
}

// Resolve picks the client configuration: the named context (or the
// default one), with ORCHARD_URL, ORCHARD_SERVICE_ACCOUNT_NAME and
// ORCHARD_SERVICE_ACCOUNT_TOKEN from env overriding it. A context's pinned
// certificate is kept only while the URL is the context's own.
func Resolve(home, name string, env []string) (Config, error) {
	f, err := LoadContexts(ContextsPath(home))
	if err != nil {
		return Config{}, err
	}
	if name == "" {
		name = f.DefaultContext
	}
	var cfg Config
	if name != "" {
		c, ok := f.Contexts[name]
		if !ok {
			return Config{}, fmt.Errorf("no context named %q in %s (orchard context list shows them)", name, ContextsPath(home))
		}
		if cfg, err = c.Config(); err != nil {
			return Config{}, err
		}
	}
	if u := lookup(env, EnvURL); u != "" {
		if u != cfg.URL {
			cfg.CertificatePEM = nil
		}
		cfg.URL = u
	}
	if n := lookup(env, EnvServiceAccountName); n != "" {
		cfg.ServiceAccountName = n
	}
	if t := lookup(env, EnvServiceAccountToken); t != "" {
		cfg.ServiceAccountToken = t
	}
	if cfg.URL == "" {
		return Config{}, errors.New("no controller configured: run `orchard dev`, or `orchard context create URL --bootstrap-token T`, or set ORCHARD_URL")
	}
	return cfg, nil
}

// ContextNames lists the contexts, sorted.
func (f *Contexts) ContextNames() []string {
	names := make([]string, 0, len(f.Contexts))
	for n := range f.Contexts {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// NormalizeURL adds what a controller URL typed by hand leaves out: the
// https:// scheme and the default port 6120.
func NormalizeURL(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("controller URL %q: want [http[s]://]HOST[:PORT]", raw)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "6120")
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// FetchCertificate connects to an https:// controller without verifying it
// and returns the certificate it presents, for trust on first use: the
// caller shows its fingerprint and asks before pinning it.
func FetchCertificate(ctx context.Context, controllerURL string) ([]byte, error) {
	u, err := url.Parse(controllerURL)
	if err != nil || u.Scheme != "https" {
		return nil, fmt.Errorf("fetch certificate: %q is not an https:// URL", controllerURL)
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("fetch certificate from %s: %w", u.Host, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, fmt.Errorf("fetch certificate from %s: none presented", u.Host)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[0].Raw}), nil
}
