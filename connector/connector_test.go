package connector

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/certs"
)

func tlsOf(f certs.ClientFiles) TLS { return TLS{CA: f.CA, Cert: f.Cert, Key: f.Key} }

// TestTLSPlayground: every connection of the connector against a
// playground serving TLS with client certificates required, as TiKV and PD
// do with security configured; a plaintext client is refused with
// ErrUnavailable within its timeout.
func TestTLSPlayground(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1, TLSDir: t.TempDir()})
	require.NoError(t, err)
	defer p.Close()
	tl := tlsOf(p.ClientTLS())
	cfg := Config{PDAddrs: []string{p.PDAddr()}, TLS: tl, Timeout: 5 * time.Second, Component: "connector-test"}

	cl, err := Connect(ctx, cfg, "/")
	require.NoError(t, err)
	ts, err := GetTS(ctx, cl.PD)
	require.NoError(t, err)
	require.NotZero(t, ts)
	_, err = cl.Etcd.Put(ctx, "/pitr-test/k", "v")
	require.NoError(t, err)
	cl.Close()

	kv, err := KV(ctx, cfg)
	require.NoError(t, err)
	txn, err := kv.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte("tls/k"), []byte("v")))
	require.NoError(t, txn.Commit(ctx))
	snap := kv.GetSnapshot(txn.CommitTS())
	v, err := snap.Get(ctx, []byte("tls/k"))
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	require.NoError(t, kv.Close())

	store := p.StoreIDs()[0]
	conn, err := Dial(p.StoreAddrs()[store], tl)
	require.NoError(t, err)
	hr, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, grpc_health_v1.HealthCheckResponse_SERVING, hr.GetStatus())
	require.NoError(t, conn.Close())

	hc, err := HTTPClient(tl, 5*time.Second)
	require.NoError(t, err)
	resp, err := hc.Get(URL(tl, p.StatusAddrs()[store], "/config"))
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	_ = resp.Body.Close()

	// Plaintext against TLS: refused, in one error, within the timeout.
	plain := cfg
	plain.TLS = TLS{}
	plain.Timeout = 2 * time.Second
	began := time.Now()
	_, err = PD(ctx, plain)
	require.ErrorIs(t, err, ErrUnavailable)
	_, err = Etcd(ctx, plain, "/")
	require.ErrorIs(t, err, ErrUnavailable)
	require.Less(t, time.Since(began), 10*time.Second)

	// A certificate of another CA: refused too.
	other := certs.PathsIn(t.TempDir())
	_, err = certs.Ensure(filepath.Dir(other.CA))
	require.NoError(t, err)
	wrong := cfg
	wrong.TLS, wrong.Timeout = tlsOf(other.Client()), 2*time.Second
	_, err = Etcd(ctx, wrong, "/")
	require.ErrorIs(t, err, ErrUnavailable)
}

func TestServeNeedsServerUsage(t *testing.T) {
	p, err := certs.Ensure(t.TempDir())
	require.NoError(t, err)
	_, err = TLS{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}.ServerConfig(nil)
	require.ErrorContains(t, err, "for clients only")
	_, err = TLS{CA: p.CA, Cert: p.Cert, Key: p.Key}.ServerConfig(nil)
	require.NoError(t, err)
}

func TestTLSValidate(t *testing.T) {
	dir := t.TempDir()
	p, err := certs.Ensure(dir)
	require.NoError(t, err)
	require.NoError(t, TLS{}.Validate())
	require.NoError(t, TLS{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}.Validate())
	require.NoError(t, TLS{CA: p.CA}.Validate(), "server authentication only")
	require.ErrorContains(t, TLS{Cert: p.ClientCert, Key: p.ClientKey}.Validate(), "--ca is required")
	require.ErrorContains(t, TLS{CA: p.CA, Cert: p.ClientCert}.Validate(), "go together")
	require.ErrorContains(t, TLS{CA: filepath.Join(dir, "nope.pem")}.Validate(), "read CA")
	require.ErrorContains(t, TLS{CA: p.ClientKey}.Validate(), "no PEM certificate")
	require.ErrorContains(t, TLS{CA: p.CA, Cert: p.ClientCert, Key: p.Key}.Validate(), "load")
	require.Equal(t, "https", TLS{CA: p.CA}.Scheme())
	require.Equal(t, "http", TLS{}.Scheme())
	require.Equal(t, "https://a:1/config", URL(TLS{CA: p.CA}, "a:1", "/config"))
	require.Equal(t, "http://a:1/config", URL(TLS{CA: p.CA}, "http://a:1/", "/config"), "a given scheme stays")
}

// serve runs a gRPC health server with the server side of t and returns
// its address.
func serve(t *testing.T, tl TLS, allowedCN []string) string {
	t.Helper()
	so, err := tl.ServerOption(allowedCN)
	require.NoError(t, err)
	srv := grpc.NewServer(so)
	grpc_health_v1.RegisterHealthServer(srv, healthOK{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

type healthOK struct {
	grpc_health_v1.UnimplementedHealthServer
}

func (healthOK) Check(context.Context, *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

func check(ctx context.Context, addr string, tl TLS) error {
	c, err := Dial(addr, tl)
	if err != nil {
		return err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = grpc_health_v1.NewHealthClient(c).Check(cctx, &grpc_health_v1.HealthCheckRequest{})
	return err
}

// TestServerAllowedCN: the agent's service takes only the client
// certificates signed by the CA whose CN is allowed; a rotated client
// certificate is used by the next connection without a restart.
func TestServerAllowedCN(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := certs.Ensure(dir)
	require.NoError(t, err)
	server := TLS{CA: p.CA, Cert: p.Cert, Key: p.Key}
	client := TLS{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}
	intruder, err := certs.IssueClient(dir, "intruder", "intruder.pem", "intruder-key.pem")
	require.NoError(t, err)

	addr := serve(t, server, []string{certs.ClientCN})
	require.NoError(t, check(ctx, addr, client))
	require.Error(t, check(ctx, addr, tlsOf(intruder)), "a CN not allowed")
	require.Error(t, check(ctx, addr, TLS{}), "plaintext")
	require.Error(t, check(ctx, addr, TLS{CA: p.CA}), "no client certificate")

	// Rotation: the client's files now hold the intruder's certificate.
	rot := filepath.Join(t.TempDir(), "rot")
	require.NoError(t, os.MkdirAll(rot, 0o755))
	rc := TLS{CA: p.CA, Cert: filepath.Join(rot, "c.pem"), Key: filepath.Join(rot, "k.pem")}
	copyFile(t, p.ClientCert, rc.Cert)
	copyFile(t, p.ClientKey, rc.Key)
	cfg, err := rc.ClientConfig()
	require.NoError(t, err)
	require.NoError(t, checkWith(ctx, addr, cfg))
	time.Sleep(reloadEvery + 100*time.Millisecond)
	copyFile(t, intruder.Cert, rc.Cert)
	copyFile(t, intruder.Key, rc.Key)
	require.Error(t, checkWith(ctx, addr, cfg), "the rotated certificate is presented")

	// Everyone allowed: the intruder's certificate is signed by the CA.
	open := serve(t, server, nil)
	require.NoError(t, check(ctx, open, tlsOf(intruder)))
}

// TestClientVerifiesServer: the client checks the server's chain and name
// against the CA it was given.
func TestClientVerifiesServer(t *testing.T) {
	ctx := context.Background()
	a, err := certs.Ensure(t.TempDir())
	require.NoError(t, err)
	b, err := certs.Ensure(t.TempDir())
	require.NoError(t, err)
	addr := serve(t, TLS{CA: a.CA, Cert: a.Cert, Key: a.Key}, nil)
	require.NoError(t, check(ctx, addr, TLS{CA: a.CA, Cert: a.ClientCert, Key: a.ClientKey}))
	err = check(ctx, addr, TLS{CA: b.CA, Cert: a.ClientCert, Key: a.ClientKey})
	require.ErrorContains(t, err, "unknown authority", "a server signed by another CA")
	// 127.0.0.1 is in the server certificate's IP SANs; another address is
	// not (TLS sends no SNI for an IP, the check still happens).
	cfg0, err := TLS{CA: a.CA, Cert: a.ClientCert, Key: a.ClientKey}.ClientConfig()
	require.NoError(t, err)
	cfg0.ServerName = "10.0.0.1"
	require.ErrorContains(t, checkWith(ctx, addr, cfg0), "10.0.0.1", "an IP the certificate does not carry")

	cfg, err := TLS{CA: a.CA, Cert: a.ClientCert, Key: a.ClientKey}.ClientConfig()
	require.NoError(t, err)
	cfg.ServerName = "pd.example.com"
	err = checkWith(ctx, addr, cfg)
	require.ErrorContains(t, err, "pd.example.com", "a name the certificate does not carry")
}

func checkWith(ctx context.Context, addr string, cfg *tls.Config) error {
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = grpc_health_v1.NewHealthClient(c).Check(cctx, &grpc_health_v1.HealthCheckRequest{})
	return err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	tmp := to + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o600))
	require.NoError(t, os.Rename(tmp, to))
}

// TestServerALPN: the agent's gRPC service negotiates "h2" (gRPC clients
// from 1.67 on refuse a server without it).
func TestServerALPN(t *testing.T) {
	p, err := certs.Ensure(t.TempDir())
	require.NoError(t, err)
	addr := serve(t, TLS{CA: p.CA, Cert: p.Cert, Key: p.Key}, nil)
	cfg, err := TLS{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}.ClientConfig()
	require.NoError(t, err)
	cfg.NextProtos, cfg.ServerName = []string{"h2"}, "127.0.0.1"
	conn, err := tls.Dial("tcp", addr, cfg)
	require.NoError(t, err)
	defer conn.Close()
	require.Equal(t, "h2", conn.ConnectionState().NegotiatedProtocol)
}
