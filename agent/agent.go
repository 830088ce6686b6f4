package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/txnkv"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// Version is the agent's version, reported in Status and the etcd record.
var Version = "dev"

// Sentinel errors of New, for callers that map them to exit statuses.
var (
	// ErrUnavailable: PD or its etcd could not be reached in time
	// (connector.ErrUnavailable).
	ErrUnavailable = connector.ErrUnavailable
	// ErrStoreNotFound: PD lists no store with the configured TiKV address.
	ErrStoreNotFound = errors.New("store not found")
)

// maxRecvMsgSize bounds one received ChangeDataEvent. TiKV batches events up
// to 6 MiB (CDC_RESP_MAX_BYTES), but one row is never split, and TiKV sends
// without a limit (src/server/server.rs max_send_message_len(-1)). A TiDB
// row may be 120 MiB (txn-entry-size-limit), and its PREWRITE carries the
// value and the old value. TiCDC's kv client takes up to 1 GiB
// (grpcMaxCallRecvMsgSize); a message above the limit would break the
// stream on every rescan of the region (ResourceExhausted).
const maxRecvMsgSize = 1 << 30

// Agent captures the change stream of one TiKV store for every running task.
type Agent struct {
	cfg      Config
	log      hclog.Logger
	met      *metrics
	reg      prometheus.Registerer
	gatherer prometheus.Gatherer
	// Every task's storage is a storage.Stack sharing these: one upload
	// rate limit and one set of pitr_storage_* metrics.
	upLimit *storage.RateLimited
	storMet *storage.MetricsSet

	pd        pd.Client
	etcd      *clientv3.Client
	tikv      *grpc.ClientConn
	cdc       cdcpb.ChangeDataClient
	storeID   uint64
	clusterID uint64

	grpcLn  net.Listener
	httpLn  net.Listener
	grpcSrv *grpc.Server
	httpSrv *http.Server
	started time.Time

	lease  atomic.Int64 // current etcd lease (0: none)
	health health
	// pending counts the pending prewrites of every task's matchers
	// against cfg.PrewriteBudget (matcher.go).
	pending pendingAcct

	mu      sync.Mutex
	tasks   map[string]*runner
	lastErr string

	closeOnce sync.Once

	// Snapshot backup scans (backup.go).
	backupSem   chan struct{}
	kvMu        sync.Mutex
	kv          *txnkv.Client
	backupLimit *storage.RateLimited // the snapshot scans' upload limit

	wrapSink func(sink) sink // tests: wraps each capture's flusher
}

// health is what /healthz reports, kept up to date by the loops.
type health struct {
	mu      sync.Mutex
	pdErr   string
	etcdErr string
}

func (h *health) set(pdErr, etcdErr *string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := ""
	if err != nil {
		s = err.Error()
	}
	if pdErr != nil {
		*pdErr = s
	}
	if etcdErr != nil {
		*etcdErr = s
	}
}

func (a *Agent) setPDErr(err error)   { a.health.set(&a.health.pdErr, nil, err) }
func (a *Agent) setEtcdErr(err error) { a.health.set(nil, &a.health.etcdErr, err) }

// New connects to PD (waiting at most ConnectTimeout), finds the store id of
// cfg.TiKVAddr, connects to PD's etcd and binds the listeners. Nothing runs
// until Run.
func New(cfg Config) (*Agent, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.Named("agent")
	reg, gath := cfg.Registerer, cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg = r
	}
	if gath == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gath = g
		} else {
			gath = prometheus.NewRegistry()
		}
	}
	a := &Agent{cfg: cfg, log: log, reg: reg, gatherer: gath, tasks: map[string]*runner{}, backupSem: make(chan struct{}, DefaultBackupConcurrency), started: time.Now(),
		upLimit: storage.NewSharedLimit(cfg.UploadRateLimit)}
	if err := a.connect(); err != nil {
		a.closeClients()
		if a.grpcLn != nil {
			_ = a.grpcLn.Close()
		}
		if a.httpLn != nil {
			_ = a.httpLn.Close()
		}
		return nil, err
	}
	a.log.Info("agent ready", "tikv", a.cfg.TiKVAddr, "cluster_id", a.clusterID, "grpc", a.Addr(), "http", a.HTTPAddr())
	return a, nil
}

func (a *Agent) connect() (err error) {
	cfg, log := a.cfg, a.log

	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	cc := connector.Config{PDAddrs: cfg.PDAddrs, TLS: cfg.TLS, Timeout: cfg.ConnectTimeout, Component: "pitr-agent"}
	if a.pd, err = connector.PD(ctx, cc); err != nil {
		return err
	}
	a.clusterID = a.pd.GetClusterID(ctx)
	if a.storeID, err = a.findStore(ctx); err != nil {
		return err
	}
	a.log = log.With("store", a.storeID)

	if a.etcd, err = connector.Etcd(ctx, cc, task.TaskPrefix); err != nil {
		return err
	}

	a.tikv, err = connector.Dial(a.cfg.TiKVAddr, cfg.TLS, // found by findStore with TiKVAuto
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 3 * time.Second}),
		grpc.WithInitialWindowSize(8<<20), grpc.WithInitialConnWindowSize(16<<20),
	)
	if err != nil {
		return fmt.Errorf("tikv: %w", err)
	}
	a.cdc = cdcpb.NewChangeDataClient(a.tikv)

	if a.grpcLn, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.ListenAddr, err)
	}
	var sopts []grpc.ServerOption
	if so, err := cfg.TLS.ServerOption(cfg.AllowedCN); err != nil {
		return err
	} else if so != nil {
		sopts = append(sopts, so)
	}
	a.grpcSrv = grpc.NewServer(sopts...)
	pitrpb.RegisterAgentServer(a.grpcSrv, &service{a: a})
	if cfg.HTTPAddr != "-" {
		if a.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
		}
		a.httpSrv = &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	}
	if a.met, err = newMetrics(a.reg, a); err != nil {
		return err
	}
	a.storMet, err = storage.NewMetricsSet(a.reg, storage.MetricsOptions{})
	return err
}

// UploadRateLimit returns the upload rate limit in bytes per second (0:
// none).
func (a *Agent) UploadRateLimit() int64 {
	if a.upLimit == nil {
		return 0
	}
	return a.upLimit.Limit()
}

// SetUploadRateLimit changes the upload rate limit of every task at once
// (0: none); uploads already waiting finish under the old one.
func (a *Agent) SetUploadRateLimit(bytesPerSec int64) error {
	if bytesPerSec < 0 {
		return fmt.Errorf("upload rate limit %d: want bytes per second, or 0 for none", bytesPerSec)
	}
	old := a.upLimit.Limit()
	a.upLimit.SetLimit(bytesPerSec)
	a.log.Info("upload rate limit changed", "old_bytes_per_second", old, "bytes_per_second", bytesPerSec)
	return nil
}

// findStore matches cfg.TiKVAddr against PD's store list, retrying until ctx
// ends (the store may not have registered yet).
func (a *Agent) findStore(ctx context.Context) (uint64, error) {
	var known []string
	for {
		stores, err := a.pd.GetAllStores(ctx, opt.WithExcludeTombstone())
		if err == nil {
			known = known[:0]
			live := stores[:0:0]
			for _, s := range stores {
				if s.GetState() == metapb.StoreState_Tombstone {
					continue
				}
				live = append(live, s)
				if s.GetAddress() == a.cfg.TiKVAddr {
					return s.GetId(), nil
				}
				known = append(known, s.GetAddress())
			}
			if a.cfg.TiKVAddr == TiKVAuto {
				s, ok, aerr := a.autoStore(ctx, live)
				if aerr != nil {
					return 0, aerr
				}
				if ok {
					a.log.Info("found this host's store", "store", s.GetId(), "tikv", s.GetAddress())
					a.cfg.TiKVAddr = s.GetAddress()
					return s.GetId(), nil
				}
			}
		}
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			if err != nil {
				return 0, fmt.Errorf("%w: list stores from PD: %v", ErrUnavailable, err)
			}
			sort.Strings(known)
			if a.cfg.TiKVAddr == TiKVAuto {
				names := a.cfg.LocalNames
				if names == nil {
					names = localNames()
				}
				return 0, fmt.Errorf("%w: --tikv auto: no store of PD's is on this host (this host: %s; stores: %s); give --tikv ADDR",
					ErrStoreNotFound, strings.Join(names, ", "), strings.Join(known, ", "))
			}
			return 0, fmt.Errorf("%w: PD has no store at %s (stores: %s)", ErrStoreNotFound, a.cfg.TiKVAddr, strings.Join(known, ", "))
		case <-t.C:
		}
	}
}

// StoreID returns the id of the agent's store.
func (a *Agent) StoreID() uint64 { return a.storeID }

// ClusterID returns the cluster id PD reported.
func (a *Agent) ClusterID() uint64 { return a.clusterID }

// Addr returns the address the Agent gRPC service listens on.
func (a *Agent) Addr() string { return a.grpcLn.Addr().String() }

// HTTPAddr returns the address of /metrics and /healthz ("" when disabled).
func (a *Agent) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

func (a *Agent) advertised() string {
	if a.cfg.AdvertiseAddr != "" {
		return a.cfg.AdvertiseAddr
	}
	return a.Addr()
}

// Run serves and captures until ctx ends or a part fails. Cancelling ctx
// stops at once, without a final flush (Drain first for a graceful stop):
// buffered rows are lost, which is safe, because region checkpoints only
// count once the meta that holds their data is stored.
func (a *Agent) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.grpcSrv.Serve(a.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve agent grpc: %w", err)
		}
		return nil
	})
	if a.httpSrv != nil {
		g.Go(func() error {
			if err := a.httpSrv.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve http: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		a.grpcSrv.Stop()
		if a.httpSrv != nil {
			_ = a.httpSrv.Close()
		}
		return nil
	})
	g.Go(func() error { return a.registerLoop(ctx) })
	g.Go(func() error { return a.watchTasks(ctx) })
	g.Go(func() error { return a.pdHealthLoop(ctx) })
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Drain cuts a last flush of every task, for a graceful stop: after it, the
// regions' checkpoints cover everything resolved so far. Call it before
// cancelling Run's context.
func (a *Agent) Drain(ctx context.Context) error {
	var errs []error
	for _, r := range a.runners() {
		if _, err := r.flushNow(ctx); err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", r.name, err))
		}
	}
	return errors.Join(errs...)
}

// Close releases the clients and removes the agent's registration. Call it
// after Run returned.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		if id := a.lease.Load(); id != 0 && a.etcd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = a.etcd.Revoke(ctx, clientv3.LeaseID(id))
			cancel()
		}
		if a.grpcSrv != nil {
			a.grpcSrv.Stop()
		}
		if a.grpcLn != nil {
			_ = a.grpcLn.Close()
		}
		if a.httpLn != nil {
			_ = a.httpLn.Close()
		}
		a.closeClients()
	})
	return nil
}

func (a *Agent) closeClients() {
	a.kvMu.Lock()
	if a.kv != nil {
		_ = a.kv.Close()
		a.kv = nil
	}
	a.kvMu.Unlock()
	if a.tikv != nil {
		_ = a.tikv.Close()
	}
	if a.etcd != nil {
		_ = a.etcd.Close()
	}
	if a.pd != nil {
		a.pd.Close()
	}
}

// registerLoop keeps the agent's record in etcd under a live lease,
// re-creating both whenever the lease is lost.
func (a *Agent) registerLoop(ctx context.Context) error {
	rec := &pitrpb.AgentRecord{
		FormatVersion: uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1),
		StoreId:       a.storeID, Addr: a.advertised(), TikvAddr: a.cfg.TiKVAddr,
		Version: Version, StartedUnixMs: a.started.UnixMilli(), HttpAddr: a.HTTPAddr(),
	}
	val, err := encodeAgentRecord(rec)
	if err != nil {
		return err
	}
	bo := newBackoff(500*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := a.registerOnce(ctx, val)
		if ctx.Err() != nil {
			return nil
		}
		a.setEtcdErr(fmt.Errorf("agent registration: %w", err))
		a.log.Warn("agent registration lost; registering again", "error", err)
		if !bo.wait(ctx) {
			return nil
		}
	}
	return nil
}

func (a *Agent) registerOnce(ctx context.Context, val string) error {
	ttl := int64(a.cfg.LeaseTTL / time.Second)
	lease, err := a.etcd.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	a.lease.Store(int64(lease.ID))
	if _, err := a.etcd.Put(ctx, task.AgentKey(a.storeID), val, clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("put %s: %w", task.AgentKey(a.storeID), err)
	}
	ch, err := a.etcd.KeepAlive(ctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	a.setEtcdErr(nil)
	a.log.Info("registered", "key", task.AgentKey(a.storeID), "addr", a.advertised(), "lease", fmt.Sprintf("%x", lease.ID))
	for range ch {
	}
	a.lease.Store(0)
	return errors.New("lease keep-alive ended")
}

// pdHealthLoop checks PD every few seconds for /healthz.
func (a *Agent) pdHealthLoop(ctx context.Context) error {
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, _, err := a.pd.GetTS(cctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			a.setPDErr(fmt.Errorf("pd: %w", err))
		} else {
			a.setPDErr(nil)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchTasks follows the task records in etcd and runs a capture for every
// RUNNING task; it stops the capture of a task that is paused, stopped,
// failed or deleted (its buffer is dropped: the data is captured again from
// the global checkpoint on resume).
func (a *Agent) watchTasks(ctx context.Context) error {
	var wg sync.WaitGroup
	defer func() {
		for _, r := range a.runners() {
			a.stopTask(r.name, "agent stopping")
		}
		wg.Wait()
	}()
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		recs, rev, err := task.List(ctx, a.etcd)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.setEtcdErr(err)
			a.log.Warn("list tasks", "error", err)
			bo.wait(ctx)
			continue
		}
		a.setEtcdErr(nil)
		want := map[string]bool{}
		for _, r := range recs {
			want[r.GetInfo().GetName()] = true
		}
		for _, r := range a.runners() {
			if !want[r.name] {
				a.stopTask(r.name, "deleted")
			}
		}
		for _, r := range recs {
			a.applyTask(ctx, &wg, r)
		}
		wch := a.etcd.Watch(clientv3.WithRequireLeader(ctx), task.TaskPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				a.log.Warn("task watch interrupted; listing again", "error", err)
				break
			}
			bo.reset()
			for _, ev := range wr.Events {
				name, _ := task.NameFromKey(string(ev.Kv.Key))
				if ev.Type == clientv3.EventTypeDelete {
					a.stopTask(name, "deleted")
					continue
				}
				rec, err := task.DecodeRecord(ev.Kv.Value)
				if err != nil {
					a.log.Error("bad task record; ignoring it", "key", string(ev.Kv.Key), "error", err)
					continue
				}
				a.applyTask(ctx, &wg, rec)
			}
		}
		if ctx.Err() == nil {
			bo.wait(ctx)
		}
	}
	return nil
}

// applyTask starts, restarts or stops the capture of one task to match its
// record. Only watchTasks calls it.
func (a *Agent) applyTask(ctx context.Context, wg *sync.WaitGroup, rec *pitrpb.TaskRecord) {
	name := rec.GetInfo().GetName()
	if err := task.ValidateName(name); err != nil {
		a.log.Error("ignoring task with a bad name", "error", err)
		return
	}
	running := rec.GetState() == pitrpb.TaskState_TASK_STATE_RUNNING
	a.mu.Lock()
	cur := a.tasks[name]
	same := cur != nil && cur.sameTask(rec)
	a.mu.Unlock()
	switch {
	case running && same:
		return
	case !running:
		a.stopTask(name, strings.ToLower(strings.TrimPrefix(rec.GetState().String(), "TASK_STATE_")))
		return
	case cur != nil:
		a.stopTask(name, "task record changed")
	}
	r := newRunner(ctx, a, rec)
	a.mu.Lock()
	a.tasks[name] = r
	a.mu.Unlock()
	a.log.Info("capturing task", "task", name, "start_ts", rec.GetInfo().GetStartTs(), "storage", rec.GetStorageUrl(), "ranges", len(rec.GetInfo().GetRanges()))
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.run()
	}()
}

// stopTask stops the capture of a task and waits for it.
func (a *Agent) stopTask(name, why string) {
	a.mu.Lock()
	r := a.tasks[name]
	delete(a.tasks, name)
	a.mu.Unlock()
	if r == nil {
		return
	}
	a.log.Info("stopping capture", "task", name, "reason", why)
	r.stop()
}

func (a *Agent) runners() []*runner {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*runner, 0, len(a.tasks))
	for _, r := range a.tasks {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (a *Agent) runner(name string) (*runner, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if name == "" {
		if len(a.tasks) == 1 {
			for _, r := range a.tasks {
				return r, nil
			}
		}
		return nil, fmt.Errorf("%w: %d tasks running, name one", errNoTask, len(a.tasks))
	}
	r := a.tasks[name]
	if r == nil {
		return nil, fmt.Errorf("%w: %s", errNoTask, name)
	}
	return r, nil
}

var errNoTask = errors.New("no such running task")

func (a *Agent) setLastErr(err error) {
	a.mu.Lock()
	a.lastErr = err.Error()
	a.mu.Unlock()
}

// tso returns a timestamp from PD.
func (a *Agent) tso(ctx context.Context) (uint64, error) {
	p, l, err := a.pd.GetTS(ctx)
	if err != nil {
		return 0, fmt.Errorf("get tso: %w", err)
	}
	return keyspace.Compose(p, l), nil
}

// backoff is a capped exponential delay.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) reset() { b.cur = b.min }

// wait sleeps the current delay (or until ctx ends) and doubles it; false
// when ctx ended.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(b.cur*2, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
