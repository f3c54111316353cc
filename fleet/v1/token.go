package v1

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// BootstrapTokenPrefix starts every bootstrap token, in Orchard's format.
const BootstrapTokenPrefix = "orchard-bootstrap-token-v0"

// BootstrapToken carries what a worker or a CLI needs to reach the
// controller: a service account and, when the controller serves TLS, its
// certificate, which the holder pins.
type BootstrapToken struct {
	ServiceAccountName  string
	ServiceAccountToken string
	// CertificatePEM is empty when the controller runs without TLS.
	CertificatePEM []byte
}

var b64 = base64.RawURLEncoding

// String encodes t as orchard-bootstrap-token-v0.<name>.<token>[.<cert>],
// each part raw URL base64.
func (t BootstrapToken) String() string {
	parts := []string{BootstrapTokenPrefix, b64.EncodeToString([]byte(t.ServiceAccountName)), b64.EncodeToString([]byte(t.ServiceAccountToken))}
	if len(t.CertificatePEM) > 0 {
		parts = append(parts, b64.EncodeToString(t.CertificatePEM))
	}
	return strings.Join(parts, ".")
}

// ParseBootstrapToken decodes a bootstrap token. Errors never include the
// token itself.
func ParseBootstrapToken(s string) (BootstrapToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) < 3 || len(parts) > 4 || parts[0] != BootstrapTokenPrefix {
		return BootstrapToken{}, errors.New("bootstrap token: not of the form " + BootstrapTokenPrefix + ".<name>.<token>[.<certificate>]")
	}
	var decoded [3][]byte
	for i, p := range parts[1:] {
		b, err := b64.DecodeString(p)
		if err != nil {
			return BootstrapToken{}, fmt.Errorf("bootstrap token: part %d is not raw URL base64", i+2)
		}
		decoded[i] = b
	}
	t := BootstrapToken{ServiceAccountName: string(decoded[0]), ServiceAccountToken: string(decoded[1]), CertificatePEM: decoded[2]}
	if t.ServiceAccountName == "" || t.ServiceAccountToken == "" {
		return BootstrapToken{}, errors.New("bootstrap token: service account name or token is empty")
	}
	return t, nil
}

// CertificateFingerprint is the SHA-256 of a DER certificate as hex pairs
// separated by spaces, the form the controller prints at first start and
// the CLI shows before trusting a certificate.
func CertificateFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, " ")
}
