package playground

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/stretchr/testify/require"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/certs"
)

// plainHTTPRefused is what Go's HTTPS servers answer a plain HTTP request
// with (net/http server.go), before any handler runs.
const plainHTTPRefused = "Client sent an HTTP request to an HTTPS server."

func startTLS(t *testing.T, dir string) *Playground {
	t.Helper()
	p, err := Start(context.Background(), Config{Stores: 2, GCInterval: -1, TLSDir: dir, PDLeaderDelay: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func httpsGet(t *testing.T, cfg *tls.Config, url string) (int, string, error) {
	t.Helper()
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
	defer cli.CloseIdleConnections()
	resp, err := cli.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), nil
}

// requireTLSWorks checks every server of p with the client files p
// reports: PD through the PD client and raw pdpb, etcd, each store's
// gRPC services and status API, and PD's HTTP API.
func requireTLSWorks(t *testing.T, p *Playground) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	files := p.ClientTLS()
	cfg, err := certs.ClientConfig(files)
	require.NoError(t, err)
	creds := credentials.NewTLS(cfg)

	pdc, err := pd.NewClientWithContext(ctx, caller.Component("playground-tls-test"), []string{p.PDAddr()},
		pd.SecurityOption{CAPath: files.CA, CertPath: files.Cert, KeyPath: files.Key},
		opt.WithInitMetricsOption(false), opt.WithCustomTimeoutOption(5*time.Second))
	require.NoError(t, err)
	defer pdc.Close()
	// The first GetTS may be Canceled by the PD client's own start-up race
	// (see pd_test.go warmUpTSO); anything else is a failure.
	for {
		phys, _, err := pdc.GetTS(ctx)
		if err == nil {
			require.Positive(t, phys)
			break
		}
		require.True(t, errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled, "GetTS over TLS: %v", err)
		require.NoError(t, ctx.Err())
		time.Sleep(10 * time.Millisecond)
	}
	require.True(t, strings.HasPrefix(pdc.GetLeaderURL(), "https://"), "leader url %q", pdc.GetLeaderURL())

	members, err := pdpb.NewPDClient(dial(t, p.PDAddr(), creds)).GetMembers(ctx, &pdpb.GetMembersRequest{
		Header: &pdpb.RequestHeader{ClusterId: p.Cluster.ID()}})
	require.NoError(t, err)
	require.Equal(t, []string{"https://" + p.PDAddr()}, members.GetLeader().GetClientUrls())
	require.True(t, strings.HasPrefix(members.GetLeader().GetPeerUrls()[0], "https://"), "peer urls %v", members.GetLeader().GetPeerUrls())

	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + p.PDAddr()}, TLS: cfg,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer etcd.Close()
	_, err = etcd.Get(ctx, "/pd/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)

	code, body, err := httpsGet(t, cfg, "https://"+p.PDAddr()+"/pd/api/v1/config/schedule")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "leader-schedule-limit")

	ts, err := p.TS(ctx)
	require.NoError(t, err)
	addrs, statusAddrs := p.StoreAddrs(), p.StatusAddrs()
	require.Len(t, addrs, 2)
	for id, addr := range addrs {
		cc := dial(t, addr, creds)
		h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err, "store %d health", id)
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())

		code, body, err := httpsGet(t, cfg, "https://"+statusAddrs[id]+"/config")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, body, `"ratio-threshold"`)
	}

	// A read and a CDC subscription at the first region's leader.
	r := p.Cluster.Regions()[0]
	cc := dial(t, addrs[r.Leader], creds)
	var leader = r.Peers[0]
	for _, pr := range r.Peers {
		if pr.StoreId == r.Leader {
			leader = pr
		}
	}
	ep := r.Epoch
	get, err := tikvpb.NewTikvClient(cc).KvGet(ctx, &kvrpcpb.GetRequest{
		Context: &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: &leader},
		Key:     []byte("h-tls-key"), Version: ts})
	require.NoError(t, err)
	require.Nil(t, get.GetRegionError())
	require.True(t, get.GetNotFound())

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	feed, err := cdcpb.NewChangeDataClient(cc).EventFeed(sctx)
	require.NoError(t, err)
	require.NoError(t, feed.Send(&cdcpb.ChangeDataRequest{
		Header:   &cdcpb.Header{ClusterId: p.Cluster.ID(), TicdcVersion: "8.5.0"},
		RegionId: r.ID, RegionEpoch: &ep, CheckpointTs: ts, StartKey: r.StartKey, EndKey: r.EndKey, RequestId: 1,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	}))
	for initialized := false; !initialized; {
		ev, err := feed.Recv()
		require.NoError(t, err)
		for _, e := range ev.GetEvents() {
			require.Nil(t, e.GetError(), "event feed over TLS")
			for _, row := range e.GetEntries().GetEntries() {
				initialized = initialized || row.Type == cdcpb.Event_INITIALIZED
			}
		}
	}
}

func TestTLSServesEverything(t *testing.T) {
	dir := t.TempDir()
	p := startTLS(t, dir)
	require.Equal(t, certs.PathsIn(dir).Client(), p.ClientTLS())
	requireTLSWorks(t, p)

	t.Run("store restart", func(t *testing.T) {
		id := p.StoreIDs()[0]
		require.NoError(t, p.StopStore(id))
		require.NoError(t, p.StartStore(id))
		requireTLSWorks(t, p)
	})
	t.Run("pd restart", func(t *testing.T) {
		require.NoError(t, p.RestartPD(context.Background()))
		requireTLSWorks(t, p)
	})
}

func TestTLSRefusesPlaintextAndAnonymousClients(t *testing.T) {
	p := startTLS(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var storeID uint64
	for id := range p.StoreAddrs() {
		storeID = id
	}
	storeAddr, statusAddr := p.StoreAddrs()[storeID], p.StatusAddrs()[storeID]
	cfg, err := certs.ClientConfig(p.ClientTLS())
	require.NoError(t, err)
	anon := cfg.Clone()
	anon.Certificates = nil
	// With TLS 1.2 the server refuses a missing certificate inside the
	// handshake, so the client sees the alert every time; with 1.3 the
	// client's handshake completes first and its next write can race the
	// server's hang-up (certs_test checks the 1.3 alert on a plain conn).
	anon.MaxVersion = tls.VersionTLS12

	// A gRPC call on a connection the server will not have: the server
	// closes it during the TLS handshake, so the call fails Unavailable
	// with the transport's reason.
	requireRefused := func(t *testing.T, err error, reason string) {
		t.Helper()
		require.Error(t, err)
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		require.Contains(t, status.Convert(err).Message(), reason)
	}
	calls := map[string]func(cc *grpc.ClientConn) error{
		"pd": func(cc *grpc.ClientConn) error {
			_, err := pdpb.NewPDClient(cc).GetMembers(ctx, &pdpb.GetMembersRequest{Header: &pdpb.RequestHeader{ClusterId: p.Cluster.ID()}})
			return err
		},
		"etcd": func(cc *grpc.ClientConn) error {
			_, err := etcdserverpb.NewKVClient(cc).Range(ctx, &etcdserverpb.RangeRequest{Key: []byte("/pd/")})
			return err
		},
		"store": func(cc *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		},
	}
	addrOf := map[string]string{"pd": p.PDAddr(), "etcd": p.PDAddr(), "store": storeAddr}
	for name, call := range calls {
		t.Run("plaintext "+name, func(t *testing.T) {
			// The server reads the HTTP/2 preface as a bad TLS record and
			// hangs up.
			requireRefused(t, call(dial(t, addrOf[name], insecure.NewCredentials())), "error reading server preface")
		})
		t.Run("no client cert "+name, func(t *testing.T) {
			requireRefused(t, call(dial(t, addrOf[name], credentials.NewTLS(anon))), "remote error: tls: handshake failure")
		})
	}

	t.Run("plaintext status", func(t *testing.T) {
		resp, err := http.Get("http://" + statusAddr + "/config")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Contains(t, string(b), plainHTTPRefused)
	})
	t.Run("plaintext pd api", func(t *testing.T) {
		// etcd terminates TLS in its own listener (embed/serve.go
		// transport.NewTLSListener), which hangs up without an answer.
		_, err := http.Get("http://" + p.PDAddr() + "/pd/api/v1/config/schedule")
		require.ErrorIs(t, err, io.EOF)
	})
	urls := map[string]string{"status": statusAddr + "/config", "pd api": p.PDAddr() + "/pd/api/v1/config/schedule"}
	for name, u := range urls {
		t.Run("no client cert "+name, func(t *testing.T) {
			_, _, err := httpsGet(t, anon, "https://"+u)
			require.ErrorContains(t, err, "remote error: tls: handshake failure")
		})
	}

	// The control API stays plain HTTP.
	code, _ := ctlDo(t, p, http.MethodGet, "/healthz", nil)
	require.Equal(t, http.StatusOK, code)
}

func TestTLSReusesCertificates(t *testing.T) {
	dir := t.TempDir()
	p := startTLS(t, dir)
	files := p.ClientTLS()
	before := map[string][]byte{}
	for _, f := range []string{files.CA, files.Cert, files.Key, filepath.Join(dir, certs.ServerCertFile)} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		before[f] = b
	}
	require.NoError(t, p.Close())

	// A second playground on the same directory serves the same PKI, so
	// the client files handed out before still work.
	p2 := startTLS(t, dir)
	require.Equal(t, files, p2.ClientTLS())
	for f, b := range before {
		after, err := os.ReadFile(f)
		require.NoError(t, err)
		require.Equal(t, b, after, "%s was rewritten", f)
	}
	cfg, err := certs.ClientConfig(files)
	require.NoError(t, err)
	code, body, err := httpsGet(t, cfg, "https://"+p2.StatusAddrs()[p2.StoreIDs()[0]]+"/config")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
}

func TestTLSPartialCertificatesFailStart(t *testing.T) {
	dir := t.TempDir()
	_, err := certs.Ensure(dir)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, certs.ClientKeyFile)))
	_, err = Start(context.Background(), Config{Stores: 1, GCInterval: -1, TLSDir: dir})
	require.ErrorIs(t, err, certs.ErrIncomplete)
	require.ErrorContains(t, err, certs.ClientKeyFile)
	_, err = os.Stat(filepath.Join(dir, certs.ClientKeyFile))
	require.ErrorIs(t, err, os.ErrNotExist, "Start completed a partial certificate set")
}

func TestTLSOffHasNoClientFiles(t *testing.T) {
	p, err := Start(context.Background(), Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, certs.ClientFiles{}, p.ClientTLS())
}
