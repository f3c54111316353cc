package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
)

// ServerConfig is a controller with its listeners and TLS, as `orchard
// controller run` and `orchard dev` start it.
type ServerConfig struct {
	Controller Config
	// Listen is the API's address, e.g. ":6120".
	Listen string
	// MetricsListen, when set, also serves /metrics without auth there.
	MetricsListen string
	// CertFile and KeyFile give the TLS certificate; when empty a
	// self-signed one is generated in the data directory (and kept).
	CertFile, KeyFile string
	// NoTLS serves plain HTTP. It must be asked for.
	NoTLS bool
	// BootstrapToken, when set (ORCHARD_BOOTSTRAP_ADMIN_TOKEN), is applied
	// to bootstrap-admin on every start.
	BootstrapToken string
}

// Server is a running controller and what its operator needs to reach it.
type Server struct {
	*Controller
	// URL reaches the API from this host, e.g. https://127.0.0.1:6120.
	URL string
	// Certificate is nil without TLS.
	Certificate *Certificate
	// CertificateCreated says the certificate was generated on this start.
	CertificateCreated bool
	// AdminToken is the bootstrap admin's token when this start knows it:
	// generated now (AdminCreated) or given in BootstrapToken.
	AdminToken   string
	AdminCreated bool

	served chan error
}

// StartServer opens the controller, prepares TLS and the bootstrap admin,
// and serves until ctx is done. Wait returns when it has stopped.
func StartServer(ctx context.Context, cfg ServerConfig) (_ *Server, err error) {
	s := &Server{served: make(chan error, 2)}
	if !cfg.NoTLS {
		var cert Certificate
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			cert, err = LoadCertificate(cfg.CertFile, cfg.KeyFile)
		} else {
			cert, s.CertificateCreated, err = LoadOrCreateCertificate(cfg.Controller.DataDir)
		}
		if err != nil {
			return nil, err
		}
		s.Certificate = &cert
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer func() {
		if err != nil {
			ln.Close()
		}
	}()
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("listen for metrics on %s: %w", cfg.MetricsListen, err)
		}
		defer func() {
			if err != nil {
				metricsLn.Close()
			}
		}()
	}
	c, err := Open(cfg.Controller)
	if err != nil {
		return nil, err
	}
	s.Controller = c
	s.AdminCreated, s.AdminToken, err = c.EnsureBootstrapAdmin(ctx, cfg.BootstrapToken)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("create the bootstrap admin: %w", err)
	}
	s.URL = localURL(ln.Addr(), s.Certificate != nil)

	go func() { s.served <- c.Serve(ctx, ln, s.Certificate) }()
	if metricsLn != nil {
		go func() { s.served <- c.ServeMetrics(ctx, metricsLn) }()
	} else {
		s.served <- nil
	}
	return s, nil
}

// Wait blocks until serving stops (its context is done, or a listener
// failed), then closes the controller.
func (s *Server) Wait() error {
	err := errors.Join(<-s.served, <-s.served)
	return errors.Join(err, s.Controller.Close())
}

// localURL is how a client on this host reaches addr.
func localURL(addr net.Addr, tls bool) string {
	host, port := "127.0.0.1", ""
	if tcp, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
		if !tcp.IP.IsUnspecified() {
			host = tcp.IP.String()
		}
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}
