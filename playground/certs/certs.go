// Package certs makes the test PKI the playground serves TLS with: a CA, a
// server certificate for the loopback addresses and a client certificate,
// in the files TiDB's TLS docs name (ca.pem, server.pem, server-key.pem,
// client.pem, client-key.pem; docs.pingcap.com "Generate Self-Signed
// Certificates"). The CA's key is kept next to them as ca-key.pem, so more
// client certificates (other CNs, for allow-list tests) can be issued later.
//
// A directory that already holds the five files is used as it is: a user
// may point the playground at a PKI of their own, and it must never be
// overwritten. A directory holding only some of them is an error, since
// completing it would mean mixing two PKIs.
//
// It imports nothing but the standard library.
package certs

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
	"strings"
	"time"
)

// File names inside a PKI directory.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client.pem"
	ClientKeyFile  = "client-key.pem"
)

// ClientCN is the common name of the generated client certificate.
const ClientCN = "pitr-client"

// validity is how long generated certificates are valid: long enough that
// a kept playground directory never expires under a test.
const validity = 10 * 365 * 24 * time.Hour

// ErrIncomplete is returned by Ensure for a directory that holds some but
// not all of the PKI files.
var ErrIncomplete = errors.New("incomplete certificate set")

// ErrNoCAKey is returned by IssueClient when the directory has no CA key
// (a PKI the user brought, whose CA key stays with them).
var ErrNoCAKey = errors.New("no CA key to issue certificates with")

// Paths are the files of a PKI directory.
type Paths struct {
	CA         string // CA certificate (PEM), trusted by servers and clients
	Cert       string // server certificate
	Key        string // server private key
	ClientCert string // client certificate (CN ClientCN)
	ClientKey  string // client private key
}

// ClientFiles are what a client needs to talk to a server of the PKI: the
// CA to verify the server and its own certificate and key. They map one to
// one onto pitr's --ca/--cert/--key flags and pd.SecurityOption.
type ClientFiles struct {
	CA   string
	Cert string
	Key  string
}

// Client returns the files of the PKI's default client.
func (p Paths) Client() ClientFiles {
	return ClientFiles{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}
}

// PathsIn returns the paths of the PKI files in dir, whether they exist or
// not.
func PathsIn(dir string) Paths {
	return Paths{
		CA:         filepath.Join(dir, CAFile),
		Cert:       filepath.Join(dir, ServerCertFile),
		Key:        filepath.Join(dir, ServerKeyFile),
		ClientCert: filepath.Join(dir, ClientCertFile),
		ClientKey:  filepath.Join(dir, ClientKeyFile),
	}
}

// Ensure returns the PKI in dir, generating it when dir has none of its
// files. When all five exist they are reused unchanged (ca-key.pem is then
// optional); when only some exist it fails with ErrIncomplete naming the
// missing ones.
func Ensure(dir string) (Paths, error) {
	p := PathsIn(dir)
	var have, missing []string
	for _, f := range []string{p.CA, p.Cert, p.Key, p.ClientCert, p.ClientKey} {
		ok, err := exists(f)
		if err != nil {
			return Paths{}, err
		}
		if ok {
			have = append(have, filepath.Base(f))
		} else {
			missing = append(missing, filepath.Base(f))
		}
	}
	if len(missing) == 0 {
		return p, nil
	}
	// A lone ca-key.pem also belongs to someone's PKI: generating would
	// overwrite it.
	if ok, err := exists(filepath.Join(dir, CAKeyFile)); err != nil {
		return Paths{}, err
	} else if ok {
		have = append(have, CAKeyFile)
	}
	if len(have) > 0 {
		return Paths{}, fmt.Errorf("certificates in %s: have %s but not %s: %w (remove them or add the rest)",
			dir, strings.Join(have, ", "), strings.Join(missing, ", "), ErrIncomplete)
	}
	if err := generate(dir, p); err != nil {
		return Paths{}, fmt.Errorf("generate certificates in %s: %w", dir, err)
	}
	return p, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("check %s: %w", path, err)
	}
}

// generate writes a new CA, server and client certificate into dir.
func generate(dir string, p Paths) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create dir: %w", err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "pitr playground CA"},
		NotBefore:             now.Add(-time.Hour), // tolerate a little clock skew
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("ca certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("ca certificate: %w", err)
	}
	// The server certificate is also good for client auth: PD's embedded
	// etcd dials itself (its client and grpc gateway) with the server's
	// certificate, and a server that requires client certificates checks
	// that usage. TiDB's docs issue server certificates with both usages
	// for the same reason.
	srvTmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "pitr-playground"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	srvCert, srvKey, err := leaf(srvTmpl, ca, caKey)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	cliCert, cliKey, err := leaf(clientTemplate(ClientCN, now), ca, caKey)
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return fmt.Errorf("ca key: %w", err)
	}
	// Keys first and the CA certificate last: Ensure treats a directory
	// with all five files as complete, so a crash part way leaves an
	// incomplete set that Ensure reports rather than a broken one it uses.
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(dir, CAKeyFile), caKeyPEM, 0o600},
		{p.Key, srvKey, 0o600},
		{p.Cert, srvCert, 0o644},
		{p.ClientKey, cliKey, 0o600},
		{p.ClientCert, cliCert, 0o644},
		{p.CA, certPEM(caDER), 0o644},
	} {
		if err := writeFile(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func clientTemplate(cn string, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// IssueClient issues a client certificate with common name cn, signed by
// the CA in dir (which must hold ca.pem and ca-key.pem), into
// dir/certFile and dir/keyFile, and returns the files a client uses with
// it. Existing files of those names are refused, not overwritten.
func IssueClient(dir, cn, certFile, keyFile string) (ClientFiles, error) {
	out := ClientFiles{CA: filepath.Join(dir, CAFile), Cert: filepath.Join(dir, certFile), Key: filepath.Join(dir, keyFile)}
	for _, f := range []string{out.Cert, out.Key} {
		ok, err := exists(f)
		if err != nil {
			return ClientFiles{}, err
		}
		if ok {
			return ClientFiles{}, fmt.Errorf("issue client certificate %q: %s already exists", cn, f)
		}
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return ClientFiles{}, fmt.Errorf("issue client certificate %q: %w", cn, err)
	}
	cert, key, err := leaf(clientTemplate(cn, time.Now()), ca, caKey)
	if err != nil {
		return ClientFiles{}, fmt.Errorf("issue client certificate %q: %w", cn, err)
	}
	if err := writeFile(out.Key, key, 0o600); err != nil {
		return ClientFiles{}, err
	}
	if err := writeFile(out.Cert, cert, 0o644); err != nil {
		return ClientFiles{}, err
	}
	return out, nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	keyPath := filepath.Join(dir, CAKeyFile)
	if ok, err := exists(keyPath); err != nil {
		return nil, nil, err
	} else if !ok {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, ErrNoCAKey)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CAFile), keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("load CA: key is %T, want ECDSA", pair.PrivateKey)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	return ca, key, nil
}

// leaf makes a new P-256 key and a certificate for it signed by ca, both
// PEM encoded.
func leaf(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (cert, key []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	der, err := sign(tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	key, err = keyPEM(k)
	if err != nil {
		return nil, nil, err
	}
	return certPEM(der), key, nil
}

func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return der, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeFile writes data durably under path: a temporary file, fsync,
// rename, fsync of the directory, so a crash never leaves half a key.
func writeFile(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	// CreateTemp makes the file 0600; widen it only for certificates.
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	return nil
}

// ServerConfig returns the TLS config of a server of the PKI in p: it
// presents p.Cert and requires a client certificate signed by p.CA, as
// TiKV's and PD's servers do once security.ca-path, cert-path and key-path
// are set (tikv components/security/src/lib.rs, pd pkg/utils/grpcutil).
func ServerConfig(p Paths) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	pool, err := loadPool(p.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientConfig returns the TLS config of a client with the files in c: it
// trusts c.CA and presents c.Cert. Tests use it; pitr builds its own from
// its --ca/--cert/--key flags.
func ClientConfig(c ClientFiles) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("load client certificate: %w", err)
	}
	pool, err := loadPool(c.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func loadPool(caPath string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("load CA: no certificate in %s", caPath)
	}
	return pool, nil
}
