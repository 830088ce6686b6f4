package connector

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// TLS names the PEM files of a cluster's TLS set-up: the CA that signed
// the cluster's certificates, and this process's certificate and key
// (BR's and TiCDC's --ca, --cert, --key; TiUP's enable_tls and TiDB
// Operator's tlsCluster write them). The zero value is plaintext.
type TLS struct {
	CA, Cert, Key string
}

// Enabled reports whether any file is named.
func (t TLS) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// Validate checks the combination and that every named file loads: a CA
// is required once anything is named, and a certificate goes with its
// key. A CA alone is server authentication only (a cluster that does not
// ask for client certificates); TiKV and PD with security configured do
// ask, so most set-ups name all three.
func (t TLS) Validate() error {
	if !t.Enabled() {
		return nil
	}
	if t.CA == "" {
		return errors.New("tls: --ca is required with --cert/--key")
	}
	if (t.Cert == "") != (t.Key == "") {
		return errors.New("tls: --cert and --key go together")
	}
	_, err := newReloader(t)
	return err
}

// Scheme is the URL scheme of the cluster's HTTP APIs (PD's API, TiKV's
// status address): https once TLS is on.
func (t TLS) Scheme() string {
	if t.Enabled() {
		return "https"
	}
	return "http"
}

// ClientConfig returns a client TLS config (nil when TLS is off) that
// presents the certificate and verifies the server, chain and name (IP
// SANs included), against the CA as crypto/tls does. The certificate and
// key are read again when their files change (checked at most once a
// second, at handshakes), so a rotated client certificate is used by the
// next connection without a restart; the CA is read when the config is
// made (a new CA takes a new connection set-up, e.g. a restart).
func (t TLS) ClientConfig() (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	r, err := newReloader(t)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    r.cur.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s, err := r.get()
			if err != nil {
				return nil, err
			}
			if s.cert == nil {
				return &tls.Certificate{}, nil // none: the server decides
			}
			return s.cert, nil
		},
	}, nil
}

// ServerConfig returns a server TLS config (nil when TLS is off) that
// requires a client certificate signed by the CA and, when allowedCN is
// not empty, whose subject common name is in it (TiKV's
// security.cert-allowed-cn). The certificate, key and CA are read again
// when their files change (checked at most once a second, at handshakes).
func (t TLS) ServerConfig(allowedCN []string) (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if t.Cert == "" {
		return nil, errors.New("tls: serving needs --cert and --key")
	}
	r, err := newReloader(t)
	if err != nil {
		return nil, err
	}
	if err := canServe(r.cur.cert); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s, err := r.get()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion: tls.VersionTLS12,
				// The config returned here replaces the one gRPC's
				// credentials added "h2" to: offer it again (ALPN; newer
				// gRPC clients require it), and HTTP/1.1 for HTTP clients.
				NextProtos:   []string{"h2", "http/1.1"},
				Certificates: []tls.Certificate{*s.cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    s.pool,
				VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
					if len(allowedCN) == 0 {
						return nil
					}
					for _, ch := range chains {
						if len(ch) > 0 && slices.Contains(allowedCN, ch[0].Subject.CommonName) {
							return nil
						}
					}
					cn := ""
					if len(chains) > 0 && len(chains[0]) > 0 {
						cn = chains[0][0].Subject.CommonName
					}
					return fmt.Errorf("tls: client certificate CN %q is not allowed", cn)
				},
			}, nil
		},
	}, nil
}

// DialOption returns the gRPC transport credentials: TLS with
// ClientConfig, or insecure when TLS is off.
func (t TLS) DialOption() (grpc.DialOption, error) {
	cfg, err := t.ClientConfig()
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// ServerOption returns the gRPC server credentials of ServerConfig (nil
// when TLS is off).
func (t TLS) ServerOption(allowedCN []string) (grpc.ServerOption, error) {
	cfg, err := t.ServerConfig(allowedCN)
	if err != nil || cfg == nil {
		return nil, err
	}
	return grpc.Creds(credentials.NewTLS(cfg)), nil
}

// canServe refuses a certificate whose extended key usages leave out
// server authentication (a client-only certificate): clients would refuse
// every handshake with "incompatible key usage". A process that serves
// and dials, as the agent does, needs both usages, as the component
// certificates TiUP and TiDB Operator issue have.
func canServe(c *tls.Certificate) error {
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return fmt.Errorf("tls: parse the certificate: %w", err)
		}
	}
	if len(leaf.ExtKeyUsage) == 0 || slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil
	}
	return fmt.Errorf("tls: certificate %q is for clients only (no server authentication usage) and cannot serve", leaf.Subject.CommonName)
}

// reloadEvery bounds how often the files are checked for changes.
const reloadEvery = time.Second

// reloader holds the loaded files and loads them again when they change.
type reloader struct {
	t TLS

	mu      sync.Mutex
	checked time.Time
	stamp   []byte // the files' sizes and modification times
	cur     *loaded
}

type loaded struct {
	pool *x509.CertPool
	cert *tls.Certificate // nil without --cert
}

func newReloader(t TLS) (*reloader, error) {
	r := &reloader{t: t}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

// get returns the current files, reloading them when their stamp changed.
// A reload that fails (a rotation half written) keeps the previous files
// and is retried at the next check.
func (r *reloader) get() (*loaded, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.cur != nil && now.Sub(r.checked) < reloadEvery {
		return r.cur, nil
	}
	r.checked = now
	stamp, err := r.stampFiles()
	if err == nil && r.cur != nil && bytes.Equal(stamp, r.stamp) {
		return r.cur, nil
	}
	l, lerr := r.load()
	switch {
	case lerr == nil:
		r.cur, r.stamp = l, stamp
	case r.cur == nil:
		return nil, lerr
	}
	return r.cur, nil
}

func (r *reloader) stampFiles() ([]byte, error) {
	var b []byte
	for _, f := range []string{r.t.CA, r.t.Cert, r.t.Key} {
		if f == "" {
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		b = fmt.Appendf(b, "%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
	}
	return b, nil
}

func (r *reloader) load() (*loaded, error) {
	pem, err := os.ReadFile(r.t.CA)
	if err != nil {
		return nil, fmt.Errorf("tls: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", r.t.CA)
	}
	l := &loaded{pool: pool}
	if r.t.Cert != "" {
		c, err := tls.LoadX509KeyPair(r.t.Cert, r.t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls: load %s and %s: %w", r.t.Cert, r.t.Key, err)
		}
		l.cert = &c
	}
	return l, nil
}
