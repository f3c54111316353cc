package fleet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// CertificateDNSName is the first DNS name of a generated certificate.
// Clients that pin the certificate verify against it, so they can reach
// the controller by any address.
const CertificateDNSName = "orchard-controller"

// Certificate is the controller's TLS identity.
type Certificate struct {
	TLS tls.Certificate
	// PEM is the certificate (not the key), for bootstrap tokens and
	// contexts.
	PEM []byte
}

// Fingerprint is the certificate's SHA-256 fingerprint, as hex pairs
// separated by spaces (the form Orchard shows).
func (c Certificate) Fingerprint() string { return v1.CertificateFingerprint(c.TLS.Certificate[0]) }

// LoadCertificate reads a certificate and key given by the operator.
func LoadCertificate(certFile, keyFile string) (Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return Certificate{}, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return Certificate{}, fmt.Errorf("read %s: %w", certFile, err)
	}
	return Certificate{TLS: pair, PEM: firstPEMBlock(certPEM)}, nil
}

func firstPEMBlock(b []byte) []byte {
	block, _ := pem.Decode(b)
	if block == nil {
		return b
	}
	return pem.EncodeToMemory(block)
}

// LoadOrCreateCertificate returns the self-signed certificate kept in dir
// (controller.crt, controller.key), generating it on first use: ECDSA
// P-384, DNS names orchard-controller and localhost, valid ten years.
// created says whether it was generated now.
func LoadOrCreateCertificate(dir string) (cert Certificate, created bool, err error) {
	certFile, keyFile := filepath.Join(dir, "controller.crt"), filepath.Join(dir, "controller.key")
	if _, err := os.Stat(certFile); err == nil {
		cert, err := LoadCertificate(certFile, keyFile)
		return cert, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return Certificate{}, false, fmt.Errorf("check %s: %w", certFile, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return Certificate{}, false, fmt.Errorf("generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return Certificate{}, false, fmt.Errorf("generate serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "Orchard Controller"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{CertificateDNSName, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return Certificate{}, false, fmt.Errorf("create TLS certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Certificate{}, false, fmt.Errorf("encode TLS key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Certificate{}, false, fmt.Errorf("create %s: %w", dir, err)
	}
	// The key first, so a crash between the two writes leaves no
	// certificate without its key.
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return Certificate{}, false, err
	}
	if err := writeFileAtomic(certFile, certPEM, 0o644); err != nil {
		return Certificate{}, false, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Certificate{}, false, fmt.Errorf("load generated certificate: %w", err)
	}
	return Certificate{TLS: pair, PEM: certPEM}, true, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
