package coordinator

import (
	"context"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit"
)

// TestMain quiets the PD client (it logs every connection step at INFO)
// and fails the package when a test leaves goroutines behind: a
// coordinator runs for months, so a goroutine leaked per term, tick, task
// or agent connection is a leak in production.
func TestMain(m *testing.M) {
	if os.Getenv("PITR_DEBUG") == "" {
		log.SetLevel(zapcore.ErrorLevel)
	}
	goleak.VerifyTestMain(m,
		// opencensus's stats worker (linked through the GCS client):
		// started by its package init, for the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// cluster is a playground (PD + etcd on one address), a PD client and,
// when asked for, a client-go client: testkit's cluster layer (which
// imports no coordinator, so this package's own tests can use it).
type cluster struct {
	p  *playground.Playground
	pd PD
	kv *txnkv.Client
}

func startCluster(t *testing.T, gcLifeTime time.Duration) *cluster {
	t.Helper()
	return startClusterStores(t, 1, gcLifeTime, false)
}

// startClusterStores starts a playground with GC off; withKV adds a
// client-go client (made before any PD client: see testkit.Options).
func startClusterStores(t *testing.T, stores int, gcLifeTime time.Duration, withKV bool) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kc := testkit.StartCluster(t, ctx, testkit.Options{Component: "pitr-coordinator-test", WithoutKV: !withKV,
		Playground: playground.Config{Stores: stores, GCInterval: -1, GCLifeTime: gcLifeTime}})
	return &cluster{p: kc.P, pd: kc.Clients.PD, kv: kc.KV}
}

// etcd opens a new etcd client on the playground (one per coordinator, so
// closing it kills that coordinator's session only).
func (c *cluster) etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.p.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// coord is a coordinator running in the background.
type coord struct {
	*Coordinator
	etcd   *clientv3.Client
	cancel context.CancelFunc
	done   chan error
}

func (c *cluster) startCoordinator(t *testing.T, id string, mod func(*Config)) *coord {
	t.Helper()
	cli := c.etcd(t)
	cfg := Config{
		ID: id, Etcd: cli, PD: c.pd, TickInterval: 100 * time.Millisecond, PollTimeout: time.Second,
		SessionTTL: 2 * time.Second, SafePointTTL: time.Hour, HTTPAddr: "127.0.0.1:0",
		Registerer: prometheus.NewRegistry(), Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Name: id}),
	}
	if mod != nil {
		mod(&cfg)
	}
	co, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cc := &coord{Coordinator: co, etcd: cli, cancel: cancel, done: make(chan error, 1)}
	go func() { cc.done <- co.Run(ctx) }()
	t.Cleanup(func() { cc.stop(t) })
	return cc
}

// stop ends Run gracefully (resigning) and waits for it.
func (cc *coord) stop(t *testing.T) {
	cc.cancel()
	select {
	case err, ok := <-cc.done:
		if ok {
			require.NoError(t, err)
			close(cc.done)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("coordinator %s did not stop", cc.ID())
	}
	_ = cc.Close()
}

// fakeAgent serves pitrpb.Agent on loopback and registers in etcd like a
// real agent, under a lease. Its regions' checkpoints follow the clock.
type fakeAgent struct {
	pitrpb.UnimplementedAgentServer
	storeID uint64
	srv     *grpc.Server
	addr    string
	lease   clientv3.LeaseID
	cli     *clientv3.Client

	mu      sync.Mutex
	regions []*pitrpb.RegionProgress
	behind  time.Duration // checkpoint = now - behind
	frozen  uint64        // when set, every checkpoint is this
	tasks   map[string]bool
}

func startFakeAgent(t *testing.T, cli *clientv3.Client, storeID uint64, regions ...*pitrpb.RegionProgress) *fakeAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a := &fakeAgent{storeID: storeID, srv: grpc.NewServer(), addr: ln.Addr().String(), cli: cli,
		regions: regions, behind: 300 * time.Millisecond, tasks: map[string]bool{}}
	pitrpb.RegisterAgentServer(a.srv, a)
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(a.srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := cli.Grant(ctx, 5)
	require.NoError(t, err)
	a.lease = l.ID
	ka, err := cli.KeepAlive(context.Background(), l.ID)
	require.NoError(t, err)
	go func() {
		for range ka {
		}
	}()
	b, err := protobuf.Marshal(&pitrpb.AgentRecord{FormatVersion: 1, StoreId: storeID, Addr: a.addr})
	require.NoError(t, err)
	_, err = cli.Put(ctx, task.AgentKey(storeID), string(b), clientv3.WithLease(l.ID))
	require.NoError(t, err)
	return a
}

func (a *fakeAgent) serve(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tasks[name] = true
}

func (a *fakeAgent) freeze(cp uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.frozen = cp
}

func (a *fakeAgent) GetProgress(_ context.Context, req *pitrpb.GetProgressRequest) (*pitrpb.GetProgressResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.tasks[req.GetTask()] {
		return nil, status.Errorf(codes.NotFound, "task %s not running here", req.GetTask())
	}
	cp := keyspace.FromTime(time.Now().Add(-a.behind))
	if a.frozen != 0 {
		cp = a.frozen
	}
	resp := &pitrpb.GetProgressResponse{StoreId: a.storeID, Task: req.GetTask()}
	for _, r := range a.regions {
		c := protobuf.Clone(r).(*pitrpb.RegionProgress)
		if c.Checkpoint == 0 {
			c.Checkpoint = cp
		}
		resp.Regions = append(resp.Regions, c)
	}
	return resp, nil
}

func region(id, ver uint64, start, end string) *pitrpb.RegionProgress {
	return &pitrpb.RegionProgress{RegionId: id, EpochVersion: ver, StartKey: []byte(start), EndKey: []byte(end)}
}

// checkpoint reads a task's etcd checkpoint.
func checkpoint(t *testing.T, cli *clientv3.Client, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cp, err := task.Checkpoint(ctx, cli, name)
	require.NoError(t, err)
	return cp
}

func taskState(t *testing.T, cli *clientv3.Client, name string) *pitrpb.TaskRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, _, err := task.Get(ctx, cli, name)
	require.NoError(t, err)
	return rec
}

func safePoints(t *testing.T, c *cluster) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sps, err := c.p.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	return sps
}

func startTask(t *testing.T, c *cluster, cli *clientv3.Client, name string, mod func(*task.StartOptions)) *pitrpb.TaskRecord {
	t.Helper()
	o := task.StartOptions{Name: name, StorageURL: "file://" + t.TempDir()}
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := task.StartTask(ctx, cli, c.pd, o)
	require.NoError(t, err)
	return rec
}
