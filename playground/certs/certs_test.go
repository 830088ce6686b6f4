package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(b)
	require.NotNil(t, blk, path)
	c, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return c
}

func TestEnsureGenerates(t *testing.T) {
	dir := t.TempDir()
	p, err := Ensure(dir)
	require.NoError(t, err)
	require.Equal(t, PathsIn(dir), p)

	for path, mode := range map[string]os.FileMode{
		p.CA: 0o644, p.Cert: 0o644, p.ClientCert: 0o644,
		p.Key: 0o600, p.ClientKey: 0o600, filepath.Join(dir, CAKeyFile): 0o600,
	} {
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, mode, st.Mode().Perm(), path)
	}
	left, err := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	require.NoError(t, err)
	require.Empty(t, left, "temporary files left behind")

	ca := readCert(t, p.CA)
	require.True(t, ca.IsCA)
	require.InDelta(t, 10*365*24, ca.NotAfter.Sub(time.Now()).Hours(), 2)
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	require.True(t, ok)
	require.Equal(t, elliptic.P256(), pub.Curve)

	srv := readCert(t, p.Cert)
	require.NoError(t, srv.CheckSignatureFrom(ca))
	require.Equal(t, []string{"localhost"}, srv.DNSNames)
	require.Len(t, srv.IPAddresses, 2)
	require.True(t, srv.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")))
	require.True(t, srv.IPAddresses[1].Equal(net.ParseIP("::1")))
	require.Contains(t, srv.ExtKeyUsage, x509.ExtKeyUsageServerAuth)

	cli := readCert(t, p.ClientCert)
	require.NoError(t, cli.CheckSignatureFrom(ca))
	require.Equal(t, ClientCN, cli.Subject.CommonName)
	require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cli.ExtKeyUsage)
}

func TestEnsureReusesCompleteSet(t *testing.T) {
	dir := t.TempDir()
	p, err := Ensure(dir)
	require.NoError(t, err)
	before := map[string][]byte{}
	for _, f := range []string{p.CA, p.Cert, p.Key, p.ClientCert, p.ClientKey} {
		before[f], err = os.ReadFile(f)
		require.NoError(t, err)
	}
	// A user's PKI has no CA key here; it is complete all the same.
	require.NoError(t, os.Remove(filepath.Join(dir, CAKeyFile)))
	p2, err := Ensure(dir)
	require.NoError(t, err)
	require.Equal(t, p, p2)
	for f, b := range before {
		after, err := os.ReadFile(f)
		require.NoError(t, err)
		require.Equal(t, b, after, "%s was rewritten", f)
	}
	_, err = os.Stat(filepath.Join(dir, CAKeyFile))
	require.ErrorIs(t, err, os.ErrNotExist, "Ensure generated a CA key for a reused set")
}

func TestEnsurePartialSetIsAnError(t *testing.T) {
	for name, keep := range map[string][]string{
		"server pair only": {ServerCertFile, ServerKeyFile},
		"client key gone":  {CAFile, CAKeyFile, ServerCertFile, ServerKeyFile, ClientCertFile},
		"ca key alone":     {CAKeyFile},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Ensure(dir)
			require.NoError(t, err)
			kept := map[string]bool{}
			for _, f := range keep {
				kept[f] = true
			}
			for _, f := range []string{CAFile, CAKeyFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile} {
				if !kept[f] {
					require.NoError(t, os.Remove(filepath.Join(dir, f)))
				}
			}
			_, err = Ensure(dir)
			require.ErrorIs(t, err, ErrIncomplete)
			require.ErrorContains(t, err, dir)
			// Nothing was generated to fill the gap.
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Len(t, ents, len(keep))
		})
	}
}

// handshake runs a TLS handshake of client against server on loopback and
// returns the error the client sees on its first read, after the server
// had its say on the client's certificate.
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if c.(*tls.Conn).Handshake() == nil {
			_, _ = c.Write([]byte("ok"))
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err == nil {
		_, err = io.ReadFull(conn, make([]byte, 2))
		conn.Close()
	}
	<-done
	return err
}

func TestConfigsAndIssuedClient(t *testing.T) {
	dir := t.TempDir()
	p, err := Ensure(dir)
	require.NoError(t, err)
	srv, err := ServerConfig(p)
	require.NoError(t, err)
	require.Equal(t, tls.RequireAndVerifyClientCert, srv.ClientAuth)
	require.Equal(t, uint16(tls.VersionTLS12), srv.MinVersion)

	cli, err := ClientConfig(p.Client())
	require.NoError(t, err)
	require.NoError(t, handshake(t, srv, cli))

	noCert := cli.Clone()
	noCert.Certificates = nil
	require.ErrorContains(t, handshake(t, srv, noCert), "certificate required")

	intruder, err := IssueClient(dir, "intruder", "intruder.pem", "intruder-key.pem")
	require.NoError(t, err)
	require.Equal(t, ClientFiles{CA: p.CA, Cert: filepath.Join(dir, "intruder.pem"), Key: filepath.Join(dir, "intruder-key.pem")}, intruder)
	c := readCert(t, intruder.Cert)
	require.Equal(t, "intruder", c.Subject.CommonName)
	require.NoError(t, c.CheckSignatureFrom(readCert(t, p.CA)))
	st, err := os.Stat(intruder.Key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	icfg, err := ClientConfig(intruder)
	require.NoError(t, err)
	require.NoError(t, handshake(t, srv, icfg), "the CA's certificates all verify; the CN allow-list is the server's business")

	_, err = IssueClient(dir, "intruder", "intruder.pem", "other-key.pem")
	require.ErrorContains(t, err, "already exists")

	// A client of another PKI is refused by this server.
	other, err := Ensure(t.TempDir())
	require.NoError(t, err)
	ocfg, err := ClientConfig(Paths{CA: p.CA, ClientCert: other.ClientCert, ClientKey: other.ClientKey}.Client())
	require.NoError(t, err)
	require.ErrorContains(t, handshake(t, srv, ocfg), "unknown certificate authority")
}

func TestIssueClientWithoutCAKey(t *testing.T) {
	dir := t.TempDir()
	_, err := Ensure(dir)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, CAKeyFile)))
	_, err = IssueClient(dir, "intruder", "intruder.pem", "intruder-key.pem")
	require.ErrorIs(t, err, ErrNoCAKey)
}
