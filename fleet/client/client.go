package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// Config says how to reach a controller.
type Config struct {
	// URL is the controller's base URL, e.g. https://orchard:6120.
	URL                 string
	ServiceAccountName  string
	ServiceAccountToken string
	// CertificatePEM, when set, is the only certificate trusted for the
	// controller (it is self-signed, as generated ones are).
	CertificatePEM []byte
	// UserAgent defaults to "Orchard/<version>" style "orchard-client".
	UserAgent string
	// Timeout bounds ordinary requests (not watches or port-forwards).
	// Default 30s.
	Timeout time.Duration
}

// Client talks to one controller.
type Client struct {
	base    *url.URL
	cfg     Config
	http    *http.Client // for ordinary requests, with Timeout
	streams *http.Client // for watches and WebSockets, without
}

// New makes a client. It does not contact the controller (see Check).
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("no controller URL: create a context (orchard context create URL) or set ORCHARD_URL")
	}
	u, err := url.Parse(strings.TrimSuffix(cfg.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: want http://HOST:PORT or https://HOST:PORT", cfg.URL)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "orchard-client"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64
	transport.ForceAttemptHTTP2 = false
	if len(cfg.CertificatePEM) > 0 {
		if u.Scheme != "https" {
			return nil, fmt.Errorf("controller URL %q: a pinned certificate needs https://", cfg.URL)
		}
		tc, err := PinnedTLSConfig(cfg.CertificatePEM)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = tc
	}
	return &Client{
		base:    u,
		cfg:     cfg,
		http:    &http.Client{Transport: transport, Timeout: cfg.Timeout},
		streams: &http.Client{Transport: transport},
	}, nil
}

// PinnedTLSConfig trusts exactly the given certificate, verified against
// its first DNS name, so a controller reached by IP still verifies.
func PinnedTLSConfig(certPEM []byte) (*tls.Config, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the pinned controller certificate is not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse the pinned controller certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if len(cert.DNSNames) > 0 {
		tc.ServerName = cert.DNSNames[0]
	}
	return tc, nil
}

// Config returns the client's configuration.
func (c *Client) Config() Config { return c.cfg }

// StreamHTTPClient is the client's HTTP client without a request timeout,
// for long-lived connections such as the worker's tunnel.
func (c *Client) StreamHTTPClient() *http.Client { return c.streams }

// URL returns the absolute URL of an API path such as /v1/vms.
func (c *Client) URL(path string) string { return c.base.String() + path }

// AuthHeader returns the headers that authenticate a request.
func (c *Client) AuthHeader() http.Header {
	h := http.Header{}
	h.Set("User-Agent", c.cfg.UserAgent)
	if c.cfg.ServiceAccountName != "" || c.cfg.ServiceAccountToken != "" {
		r := &http.Request{Header: http.Header{}}
		r.SetBasicAuth(c.cfg.ServiceAccountName, c.cfg.ServiceAccountToken)
		h.Set("Authorization", r.Header.Get("Authorization"))
	}
	return h
}

// APIError is a non-200 answer from the controller.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("controller answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("controller answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// IsNotFound reports whether err is a 404 from the controller.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// do sends a request and decodes a 200 answer's JSON into out (when not
// nil). It returns the response headers.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := c.URL(path)
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header = c.AuthHeader()
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, describeTransportError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Header, readAPIError(resp)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.Header, fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

func readAPIError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return apiError(resp.StatusCode, b)
}

func apiError(status int, body []byte) error {
	var e v1.Error
	if json.Unmarshal(body, &e) != nil || e.Message == "" {
		e.Message = strings.TrimSpace(string(body))
	}
	return &APIError{StatusCode: status, Message: e.Message}
}

// describeTransportError adds what to do to the usual failures: nothing
// listening, and a certificate that is not trusted.
func describeTransportError(err error) error {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (is the controller running there? orchard context list shows where this CLI points)", err)
	case errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname):
		return fmt.Errorf("%w (the controller's certificate is not trusted here: create a context from a bootstrap token, which pins it, or check ORCHARD_URL, which drops the pin of another URL)", err)
	}
	return err
}

// Check verifies that the controller answers and accepts the credentials.
func (c *Client) Check(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/v1/", nil, nil, nil)
	return err
}

// ControllerInfo returns the controller's version and capabilities.
func (c *Client) ControllerInfo(ctx context.Context) (*v1.ControllerInfo, error) {
	var info v1.ControllerInfo
	_, err := c.do(ctx, http.MethodGet, "/v1/controller/info", nil, nil, &info)
	return &info, err
}

// CreateVM creates a VM and returns it as stored.
func (c *Client) CreateVM(ctx context.Context, vm *v1.VM) (*v1.VM, error) {
	var out v1.VM
	_, err := c.do(ctx, http.MethodPost, "/v1/vms", nil, vm, &out)
	return &out, err
}

// ListVMs lists VMs; filters are "path=value" pairs such as "worker=mac-1".
func (c *Client) ListVMs(ctx context.Context, filters ...string) ([]v1.VM, error) {
	q := url.Values{}
	for _, f := range filters {
		q.Add("filter", f)
	}
	var out []v1.VM
	_, err := c.do(ctx, http.MethodGet, "/v1/vms", q, nil, &out)
	return out, err
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, name string) (*v1.VM, error) {
	var out v1.VM
	_, err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name), nil, nil, &out)
	return &out, err
}

// UpdateVM changes the changeable part of a VM's spec (power state,
// softnet); send back what GetVM returned, modified.
func (c *Client) UpdateVM(ctx context.Context, vm *v1.VM) (*v1.VM, error) {
	var out v1.VM
	_, err := c.do(ctx, http.MethodPut, "/v1/vms/"+url.PathEscape(vm.Name), nil, vm, &out)
	return &out, err
}

// DeleteVM deletes a VM.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// WatchVM calls fn with every event of the VM's watch stream, starting
// with its current state, until fn returns true, the VM is deleted, or ctx
// ends.
func (c *Client) WatchVM(ctx context.Context, name string, fn func(v1.WatchEvent) (stop bool)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL("/v1/vms/"+url.PathEscape(name))+"?watch=true", nil)
	if err != nil {
		return err
	}
	req.Header = c.AuthHeader()
	resp, err := c.streams.Do(req)
	if err != nil {
		return fmt.Errorf("watch VM %q: %w", name, describeTransportError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readAPIError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev v1.WatchEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("watch VM %q: the controller ended the stream", name)
			}
			return fmt.Errorf("watch VM %q: %w", name, err)
		}
		if fn(ev) || ev.Type == v1.WatchDeleted {
			return nil
		}
	}
}

// EventsQuery selects a page of a VM's log.
type EventsQuery struct {
	Limit      int
	Descending bool
	Cursor     string
}

// VMEvents returns a page of the VM's log and the next page's cursor ("" at
// the end).
func (c *Client) VMEvents(ctx context.Context, name string, q EventsQuery) ([]v1.Event, string, error) {
	params := url.Values{}
	if q.Limit > 0 {
		params.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Descending {
		params.Set("order", "desc")
	}
	if q.Cursor != "" {
		params.Set("cursor", q.Cursor)
	}
	var out []v1.Event
	h, err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name)+"/events", params, nil, &out)
	if err != nil {
		return nil, "", err
	}
	return out, h.Get("X-Next-Cursor"), nil
}

// FollowVMEvents calls fn with each event of the VM's log after cursor
// ("" for the start), then with each new one as it is appended, until the
// VM is deleted (nil), fn returns false, or ctx ends.
func (c *Client) FollowVMEvents(ctx context.Context, name, cursor string, fn func(v1.Event) bool) error {
	q := url.Values{"follow": {"true"}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL("/v1/vms/"+url.PathEscape(name)+"/events")+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header = c.AuthHeader()
	resp, err := c.streams.Do(req)
	if err != nil {
		return fmt.Errorf("follow the log of VM %q: %w", name, describeTransportError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readAPIError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var e v1.Event
		if err := dec.Decode(&e); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("follow the log of VM %q: %w", name, err)
		}
		if !fn(e) {
			return nil
		}
	}
}

// AppendVMEvents appends lines to a VM's log.
func (c *Client) AppendVMEvents(ctx context.Context, name string, events []v1.Event) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/events", nil, events, nil)
	return err
}

// VMIP returns the VM's IP address, waiting up to wait for it.
func (c *Client) VMIP(ctx context.Context, name string, wait time.Duration) (string, error) {
	var out v1.IP
	q := url.Values{"wait": {strconv.Itoa(int(wait.Seconds()))}}
	_, err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name)+"/ip", q, nil, &out)
	return out.IP, err
}

// PortForward connects to a TCP port of a VM through the controller,
// waiting up to wait for the VM to run and the port to accept. The result
// carries the port's raw bytes.
func (c *Client) PortForward(ctx context.Context, name string, port uint16, wait time.Duration) (net.Conn, error) {
	u := c.URL("/v1/vms/"+url.PathEscape(name)+"/port-forward") + "?" + url.Values{
		"port": {strconv.Itoa(int(port))}, "wait": {strconv.Itoa(int(wait.Seconds()))},
	}.Encode()
	ws, err := tunnel.DialWebSocket(ctx, u, c.streams, c.AuthHeader())
	if err != nil {
		var ue *tunnel.UpgradeError
		if errors.As(err, &ue) {
			return nil, apiError(ue.StatusCode, ue.Body)
		}
		return nil, fmt.Errorf("port-forward to %s:%d: %w", name, port, describeTransportError(err))
	}
	return ws, nil
}

// ListWorkers lists workers.
func (c *Client) ListWorkers(ctx context.Context) ([]v1.Worker, error) {
	var out []v1.Worker
	_, err := c.do(ctx, http.MethodGet, "/v1/workers", nil, nil, &out)
	return out, err
}

// GetWorker returns one worker.
func (c *Client) GetWorker(ctx context.Context, name string) (*v1.Worker, error) {
	var out v1.Worker
	_, err := c.do(ctx, http.MethodGet, "/v1/workers/"+url.PathEscape(name), nil, nil, &out)
	return &out, err
}

// SetWorkerPaused pauses or resumes scheduling onto a worker.
func (c *Client) SetWorkerPaused(ctx context.Context, name string, paused bool) (*v1.Worker, error) {
	w, err := c.GetWorker(ctx, name)
	if err != nil {
		return nil, err
	}
	w.SchedulingPaused = paused
	var out v1.Worker
	_, err = c.do(ctx, http.MethodPut, "/v1/workers/"+url.PathEscape(name), nil, w, &out)
	return &out, err
}

// DeleteWorker deletes a worker.
func (c *Client) DeleteWorker(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/workers/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// CreateServiceAccount creates an account; an empty token gets a generated one.
func (c *Client) CreateServiceAccount(ctx context.Context, sa *v1.ServiceAccount) (*v1.ServiceAccount, error) {
	var out v1.ServiceAccount
	_, err := c.do(ctx, http.MethodPost, "/v1/service-accounts", nil, sa, &out)
	return &out, err
}

// ListServiceAccounts lists accounts, tokens included.
func (c *Client) ListServiceAccounts(ctx context.Context) ([]v1.ServiceAccount, error) {
	var out []v1.ServiceAccount
	_, err := c.do(ctx, http.MethodGet, "/v1/service-accounts", nil, nil, &out)
	return out, err
}

// GetServiceAccount returns one account, token included.
func (c *Client) GetServiceAccount(ctx context.Context, name string) (*v1.ServiceAccount, error) {
	var out v1.ServiceAccount
	_, err := c.do(ctx, http.MethodGet, "/v1/service-accounts/"+url.PathEscape(name), nil, nil, &out)
	return &out, err
}

// DeleteServiceAccount deletes an account.
func (c *Client) DeleteServiceAccount(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/service-accounts/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// ClusterSettings returns the cluster settings.
func (c *Client) ClusterSettings(ctx context.Context) (*v1.ClusterSettings, error) {
	var out v1.ClusterSettings
	_, err := c.do(ctx, http.MethodGet, "/v1/cluster-settings", nil, nil, &out)
	return &out, err
}

// SetClusterSettings replaces the cluster settings.
func (c *Client) SetClusterSettings(ctx context.Context, cs *v1.ClusterSettings) (*v1.ClusterSettings, error) {
	var out v1.ClusterSettings
	_, err := c.do(ctx, http.MethodPut, "/v1/cluster-settings", nil, cs, &out)
	return &out, err
}

// ForwardPort accepts connections on ln until ctx ends and carries each
// to port of the VM through the controller. report, when not nil, hears
// about each connection's failure (the listener keeps serving).
func (c *Client) ForwardPort(ctx context.Context, ln net.Listener, name string, port uint16, wait time.Duration, report func(error)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		local, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		go func() {
			remote, err := c.PortForward(ctx, name, port, wait)
			if err != nil {
				local.Close()
				if report != nil {
					report(err)
				}
				return
			}
			splice(local, remote)
		}()
	}
}

// splice carries a local connection to a remote one (a port-forward's
// WebSocket, which cannot half-close). When the local side stops sending,
// the remote's answer may still be coming (nc -N, an HTTP/1.0 client), so
// the remote side goes on until it ends, fails, or stays silent for
// halfClosedIdle; a local side that closed for good looks the same.
func splice(local, remote net.Conn) {
	var localDone atomic.Bool
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(local, idleReader{remote, &localDone})
		close(done)
	}()
	if _, err := io.Copy(remote, local); err != nil {
		remote.Close()
	}
	localDone.Store(true)
	_ = remote.SetReadDeadline(time.Now().Add(halfClosedIdle))
	<-done
	local.Close()
	remote.Close()
}

const halfClosedIdle = 30 * time.Second

// idleReader pushes the read deadline on with every read once the local
// side is done, so that only silence ends the remote side.
type idleReader struct {
	net.Conn
	localDone *atomic.Bool
}

func (r idleReader) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if n > 0 && r.localDone.Load() {
		_ = r.Conn.SetReadDeadline(time.Now().Add(halfClosedIdle))
	}
	return n, err
}
