// Package playground runs a TiKV- and PD-compatible local cluster in one
// process: a PD server (pdpb + embedded etcd on one port), N stores each on
// its own gRPC port (tikvpb, cdcpb, import_sstpb, health) and its own
// status HTTP port (online config change), a GC loop that honours service
// safepoints and each store's gc.ratio-threshold, and an HTTP control API
// for topology changes.
//
// With Config.TLSDir set, PD, etcd, PD's HTTP API and every store's gRPC
// and status servers serve TLS and require a client certificate, as a
// cluster with security configured does; ClientTLS returns the files a
// client needs. The control API stays plain HTTP.
//
// With Config.Dir set, every store has a KV and a raft volume and the
// playground writes BR's volume file (volumes.go); with DeferStores, the
// stores start later from restored volumes in snapshot-recovery mode, as
// BR's volume restore drives them (recovery.go).
//
// It is the test bed of pitr and the embedded default of `pitr-playground demo`; see
// DESIGN.md §8 for the rules it follows and TIKV-PROTOCOLS.md for the
// protocol behaviour it reproduces. It is imported only by tests, cmd/pitr
// and demo code.
package playground

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/certs"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/importer"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/pd"
	"github.com/pitr-io/pitr/playground/tikv"
)

// DefaultGCInterval is how often the GC loop runs unless configured. It is
// short on purpose: GC runs in a real cluster, so tests run with it.
const DefaultGCInterval = 5 * time.Second

// Config configures a playground.
type Config struct {
	// Stores is the number of stores of a new cluster (default 3). A cluster
	// reopened from Dir keeps the stores it had.
	Stores int
	// Dir keeps the data across restarts; empty keeps everything in memory.
	Dir string
	// PDAddr and CtlAddr are listen addresses; empty picks free loopback ports.
	PDAddr  string
	CtlAddr string
	// ClusterID of a new cluster (default: derived from the clock).
	ClusterID uint64
	// MinTSInterval is the CDC resolved-ts interval (default 1s, TiKV's
	// cdc.min-ts-interval).
	MinTSInterval time.Duration
	// GCInterval is how often the GC runs, as TiDB's GC worker and TiKV's
	// compaction-filter GC would (default DefaultGCInterval; 0 keeps the
	// default, negative disables the loop so tests drive GC with RunGC).
	GCInterval time.Duration
	// GCLifeTime is how long versions are kept regardless of safepoints
	// (TiDB's tikv_gc_life_time, default 10m).
	GCLifeTime time.Duration
	// BalanceInterval, when positive, runs PD's balance-leader scheduler and
	// merge checker every interval (pd.Config.BalanceInterval); off by
	// default.
	BalanceInterval time.Duration
	// Import sets every store's write-pressure and import-mode limits
	// (zero fields: TiKV's defaults).
	Import importer.Limits
	// Replicas is the number of peers of the first region of a new cluster,
	// on the first stores (default: every store), so MovePeer has
	// somewhere to go.
	Replicas int
	// TiKVVersion is the TiKV version the stores report to PD and whose CDC
	// behaviour they follow (default cdc.DefaultVersion). Below 7.3 there
	// is no Deregister, no EventFeedV2, and one subscription per region
	// per stream.
	TiKVVersion string
	// CDCMemoryQuota is each store's cdc.sink-memory-quota (default 512
	// MiB), shared by every stream of the store.
	CDCMemoryQuota int64
	// PDLeaderDelay is how long a restarted PD (RestartPD) reports regions
	// without a leader until their leaders heartbeat (default 3s; TiKV's
	// region heartbeat comes every 60s).
	PDLeaderDelay time.Duration
	// TLSDir, when set, turns TLS on: the test PKI in it is generated, or
	// reused when all of its files exist (see package certs), and PD (gRPC,
	// etcd and the HTTP API on its one port) and every store (gRPC and
	// status API) serve TLS with the server certificate and require a
	// client certificate signed by its CA, as TiKV and PD do with
	// security.ca-path/cert-path/key-path set. The control API is not
	// affected.
	TLSDir string
	// DeferStores starts PD (and the control API) but no store, as TiDB
	// Operator holds TiKV back during a volume restore: the stores start
	// with StartStoresFromVolumes (recovery.go).
	DeferStores bool
	// MinResolvedTSInterval is how often each store reports its min
	// resolved ts to PD (TiKV's pd.report-min-resolved-ts-interval,
	// default 1s; negative disables the reports).
	MinResolvedTSInterval time.Duration
	Logger                hclog.Logger
}

func (c *Config) setDefaults() {
	if c.Stores == 0 {
		c.Stores = 3
	}
	if c.PDAddr == "" {
		c.PDAddr = "127.0.0.1:0"
	}
	if c.ClusterID == 0 {
		c.ClusterID = uint64(time.Now().UnixNano())>>1 | 1
	}
	if c.MinTSInterval == 0 {
		c.MinTSInterval = time.Second
	}
	if c.GCInterval == 0 {
		c.GCInterval = DefaultGCInterval
	}
	if c.GCLifeTime == 0 {
		c.GCLifeTime = 10 * time.Minute
	}
	if c.Replicas == 0 {
		c.Replicas = c.Stores
	}
	if c.TiKVVersion == "" {
		c.TiKVVersion = cdc.DefaultVersion
	}
	if c.PDLeaderDelay == 0 {
		c.PDLeaderDelay = 3 * time.Second
	}
	if c.MinResolvedTSInterval == 0 {
		c.MinResolvedTSInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Playground is a running local cluster.
type Playground struct {
	cfg     Config
	log     hclog.Logger
	Cluster *cluster.Cluster
	Engine  *mvcc.Engine
	// PD is the running PD server; RestartPD replaces it (do not keep it
	// across a restart).
	PD *pd.Server

	// tls is the PKI the servers use; nil when TLS is off.
	tls *certs.Paths

	pdMu  sync.Mutex // guards PD against RestartPD
	pdDir string
	tmpPD bool // pdDir is a temporary directory Close removes

	mu     sync.Mutex
	stores map[uint64]*storeNode
	closed bool
	ssts   *importer.Registry

	// recovery is the snapshot recovery of stores started from volumes
	// (recovery.go); guarded by mu.
	recovery *recovery

	ctl    *http.Server
	ctlLn  net.Listener
	runCtx context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type storeNode struct {
	id         uint64
	addr       string
	statusAddr string
	srv        *tikv.Server
	cdc        *cdc.Service
	imp        *importer.Service
}

// Start starts a playground and returns once every part serves.
func Start(ctx context.Context, cfg Config) (p *Playground, err error) {
	cfg.setDefaults()
	if cfg.TiKVVersion, err = cdc.ParseVersion(cfg.TiKVVersion); err != nil {
		return nil, fmt.Errorf("tikv version: %w", err)
	}
	log := cfg.Logger.Named("playground")
	// The certificates first: a bad TLS dir fails before anything opens.
	var tlsPaths *certs.Paths
	if cfg.TLSDir != "" {
		paths, err := certs.Ensure(cfg.TLSDir)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		tlsPaths = &paths
	}
	var dataDir, pdDir string
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("create dir: %w", err)
		}
		dataDir, pdDir = filepath.Join(cfg.Dir, "data"), filepath.Join(cfg.Dir, "pd")
	}
	cl, err := cluster.OpenReplicas(cfg.Dir, cfg.ClusterID, cfg.Stores, cfg.Replicas)
	if err != nil {
		return nil, fmt.Errorf("open cluster: %w", err)
	}
	eng, err := mvcc.Open(dataDir, log.Named("mvcc"))
	if err != nil {
		return nil, fmt.Errorf("open engine: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	p = &Playground{cfg: cfg, log: log, Cluster: cl, Engine: eng, stores: map[uint64]*storeNode{}, runCtx: runCtx, cancel: cancel, ssts: importer.NewRegistry(),
		pdDir: pdDir}
	// The error returns below set p to nil, so close what was built
	// through a copy of it.
	built := p
	defer func() {
		if err != nil {
			_ = built.Close()
		}
	}()
	p.tls = tlsPaths
	if p.pdDir == "" {
		// PD keeps its etcd across RestartPD even without Dir.
		if p.pdDir, err = os.MkdirTemp("", "pitr-playground-pd-*"); err != nil {
			return nil, fmt.Errorf("create pd dir: %w", err)
		}
		p.tmpPD = true
	}
	p.PD, err = p.startPD(ctx, cfg.PDAddr, 0)
	if err != nil {
		return nil, fmt.Errorf("start pd: %w", err)
	}
	// As a TiKV leader does on election: max_ts starts at a fresh TSO, so no
	// async-commit or 1PC transaction commits below a timestamp read before
	// a restart (max_ts is only persisted at engine checkpoints).
	now, err := p.PD.TS(ctx)
	if err != nil {
		return nil, fmt.Errorf("start pd: get ts: %w", err)
	}
	eng.UpdateMaxTS(now)
	if !cfg.DeferStores {
		for _, s := range cl.Stores() {
			if err := p.startStore(s.ID, s.Addr, s.StatusAddr); err != nil {
				return nil, err
			}
		}
	} else {
		// Deferred stores are down until they start from volumes.
		for _, s := range cl.Stores() {
			if err := cl.SetStoreUp(s.ID, false, 0); err != nil {
				return nil, err
			}
		}
	}
	if cfg.Dir != "" {
		if err := p.writeVolumesFile(); err != nil {
			return nil, err
		}
	}
	if err := p.startCtl(cfg.CtlAddr); err != nil {
		return nil, err
	}
	if cfg.GCInterval > 0 {
		p.wg.Add(1)
		go p.gcLoop(runCtx)
	}
	if cfg.MinResolvedTSInterval > 0 {
		p.wg.Add(1)
		go p.minResolvedTSLoop(runCtx)
	}
	log.Info("playground started", "pd", p.PDAddr(), "ctl", p.CtlAddr(), "stores", len(p.stores), "dir", cfg.Dir)
	return p, nil
}

// startStore starts (or restarts) one store's gRPC and status servers,
// preferring the addresses it had before so that PD's store record stays
// valid. The status server starts with the default config (a restart
// resets online config changes).
func (p *Playground) startStore(id uint64, addr, statusAddr string) error {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	// The store reports its version to PD at start (PutStore).
	if err := p.Cluster.SetStoreVersion(id, p.cfg.TiKVVersion); err != nil {
		return err
	}
	if statusAddr == "" {
		statusAddr = "127.0.0.1:0"
	}
	svc := cdc.New(cdc.Config{
		StoreID:       id,
		ClusterID:     p.Cluster.ID(),
		Cluster:       p.Cluster,
		Engine:        p.Engine,
		TSO:           tsoFunc(p.TS),
		Logger:        p.cfg.Logger.Named(fmt.Sprintf("cdc-%d", id)),
		MinTSInterval: p.cfg.MinTSInterval,
		MemoryQuota:   p.cfg.CDCMemoryQuota,
		Version:       p.cfg.TiKVVersion,
	})
	var tlsCfg *tls.Config
	if p.tls != nil {
		// Read the files at every start, as a restarted TiKV process would.
		var err error
		if tlsCfg, err = certs.ServerConfig(*p.tls); err != nil {
			return fmt.Errorf("start store %d: %w", id, err)
		}
	}
	imp := importer.New(importer.Config{StoreID: id, Cluster: p.Cluster, Engine: p.Engine, SSTs: p.ssts,
		Limits: p.cfg.Import, Logger: p.cfg.Logger.Named(fmt.Sprintf("import-%d", id))})
	tcfg := tikv.Config{
		StoreID:    id,
		Addr:       addr,
		StatusAddr: statusAddr,
		Cluster:    p.Cluster,
		Engine:     p.Engine,
		Logger:     p.cfg.Logger.Named(fmt.Sprintf("tikv-%d", id)),
		TLS:        tlsCfg,
		Register:   []func(*grpc.Server){svc.Register, imp.Register, (&recoverData{p: p, storeID: id}).register},
	}
	srv, err := tikv.Start(tcfg)
	if err != nil && (addr != "127.0.0.1:0" || statusAddr != "127.0.0.1:0") {
		// An old port is taken by someone else now: take new ones.
		tcfg.Addr, tcfg.StatusAddr = "127.0.0.1:0", "127.0.0.1:0"
		srv, err = tikv.Start(tcfg)
	}
	if err != nil {
		svc.Close()
		return fmt.Errorf("start store %d: %w", id, err)
	}
	if err := p.Cluster.SetStoreUp(id, true, time.Now().Unix()); err != nil {
		srv.Stop()
		svc.Close()
		return err
	}
	p.mu.Lock()
	p.stores[id] = &storeNode{id: id, addr: srv.Addr(), statusAddr: srv.StatusAddr(), srv: srv, cdc: svc, imp: imp}
	p.mu.Unlock()
	return nil
}

func (p *Playground) startPD(ctx context.Context, addr string, leadersUnknown time.Duration) (*pd.Server, error) {
	return pd.Start(ctx, pd.Config{
		Dir:               p.pdDir,
		ClientAddr:        addr,
		Cluster:           p.Cluster,
		Logger:            p.cfg.Logger.Named("pd"),
		GCLifeTime:        p.cfg.GCLifeTime,
		LeadersUnknownFor: leadersUnknown,
		BalanceInterval:   p.cfg.BalanceInterval,
		TLS:               p.tls,
	})
}

// pd returns the running PD server.
func (p *Playground) pd() *pd.Server {
	p.pdMu.Lock()
	defer p.pdMu.Unlock()
	return p.PD
}

// TS returns a timestamp from the running PD.
func (p *Playground) TS(ctx context.Context) (uint64, error) { return p.pd().TS(ctx) }

type tsoFunc func(context.Context) (uint64, error)

func (f tsoFunc) TS(ctx context.Context) (uint64, error) { return f(ctx) }

// RestartPD stops PD (and its etcd) and starts it again on the same
// address and data. As a real PD does after a restart, it then reports
// regions without a leader until their leaders heartbeat: for
// PDLeaderDelay, or until a topology change names the region. The stores
// and their streams are not affected.
func (p *Playground) RestartPD(ctx context.Context) error {
	p.pdMu.Lock()
	defer p.pdMu.Unlock()
	addr := p.PD.Addr()
	if err := p.PD.Close(); err != nil {
		return fmt.Errorf("stop pd: %w", err)
	}
	srv, err := p.startPD(ctx, addr, p.cfg.PDLeaderDelay)
	if err != nil {
		return fmt.Errorf("restart pd: %w", err)
	}
	p.PD = srv
	p.log.Info("pd restarted", "addr", addr, "leaders_unknown_for", p.cfg.PDLeaderDelay)
	return nil
}

// CDCRegisters returns how many EventFeed Register requests the running
// store received since it started (0 when it is not running).
func (p *Playground) CDCRegisters(storeID uint64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.stores[storeID]; n != nil {
		return n.cdc.Registers()
	}
	return 0
}

// PendingSSTs returns how many written SSTs (each store's copy counted)
// wait for an ingest.
func (p *Playground) PendingSSTs() int { return p.ssts.Pending() }

// ImportStats sums the import counters of the running stores.
func (p *Playground) ImportStats() importer.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st importer.Stats
	for _, s := range p.stores {
		st = st.Add(s.imp.Stats())
	}
	return st
}

// ImportMode returns each running store's import mode, by store id.
func (p *Playground) ImportMode(ctx context.Context) (map[uint64]import_sstpb.SwitchMode, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[uint64]import_sstpb.SwitchMode{}
	for id, s := range p.stores {
		resp, err := s.imp.GetMode(ctx, &import_sstpb.GetModeRequest{})
		if err != nil {
			return nil, err
		}
		out[id] = resp.GetMode()
	}
	return out, nil
}

// PDAddr returns the PD (and etcd) client address.
func (p *Playground) PDAddr() string { return p.pd().Addr() }

// ClientTLS returns the files a client of the playground's PD, etcd and
// stores needs (pitr's --ca, --cert and --key; pd.SecurityOption's CAPath,
// CertPath and KeyPath), or the zero value when TLS is off.
func (p *Playground) ClientTLS() certs.ClientFiles {
	if p.tls == nil {
		return certs.ClientFiles{}
	}
	return p.tls.Client()
}

// CtlAddr returns the control API address. The control API is the
// playground's own (not part of TiKV or PD) and serves plain HTTP even
// when TLS is on: it listens on loopback for tests and the pitr
// playground command, and keeping it plain lets them drive a TLS cluster
// without a client certificate.
func (p *Playground) CtlAddr() string {
	if p.ctlLn == nil {
		return ""
	}
	return p.ctlLn.Addr().String()
}

// StoreAddrs returns the address of every running store, by store id.
func (p *Playground) StoreAddrs() map[uint64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[uint64]string{}
	for id, s := range p.stores {
		out[id] = s.addr
	}
	return out
}

// StatusAddrs returns the status API address of every running store.
func (p *Playground) StatusAddrs() map[uint64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[uint64]string{}
	for id, s := range p.stores {
		out[id] = s.statusAddr
	}
	return out
}

// StoreIDs returns every store id, running or not, in order.
func (p *Playground) StoreIDs() []uint64 {
	var ids []uint64
	for _, s := range p.Cluster.Stores() {
		ids = append(ids, s.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// ErrStoreRunning and ErrStoreStopped are returned by StartStore/StopStore.
var (
	ErrStoreRunning = errors.New("store is running")
	ErrStoreStopped = errors.New("store is stopped")
)

// StopStore stops a store as if its process died: its streams break, its
// leaders move to other stores. Its data stays (the engine is shared).
func (p *Playground) StopStore(id uint64) error {
	p.mu.Lock()
	n, ok := p.stores[id]
	if ok {
		delete(p.stores, id)
	}
	p.mu.Unlock()
	if !ok {
		if _, err := p.Cluster.Store(id); err != nil {
			return err
		}
		return fmt.Errorf("store %d: %w", id, ErrStoreStopped)
	}
	if err := p.Cluster.SetStoreUp(id, false, 0); err != nil {
		return err
	}
	n.cdc.Close()
	n.srv.Stop()
	p.log.Info("store stopped", "store", id)
	return nil
}

// StartStore restarts a stopped store on its previous address.
func (p *Playground) StartStore(id uint64) error {
	s, err := p.Cluster.Store(id)
	if err != nil {
		return err
	}
	p.mu.Lock()
	_, running := p.stores[id]
	p.mu.Unlock()
	if running {
		return fmt.Errorf("store %d: %w", id, ErrStoreRunning)
	}
	if err := p.startStore(id, s.Addr, s.StatusAddr); err != nil {
		return err
	}
	p.log.Info("store started", "store", id)
	return nil
}

// RunGC runs one GC round: PD advances the GC safepoint (bounded by the GC
// life time and every live service safepoint), as TiDB's GC worker does;
// then, unless every running store has GC disabled (GCEnabled), the engine
// removes the versions no reader at or after it can see, as each TiKV's
// compaction filter does. It returns the safepoint.
func (p *Playground) RunGC(ctx context.Context) (uint64, error) {
	now, err := p.TS(ctx)
	if err != nil {
		return 0, fmt.Errorf("gc: get ts: %w", err)
	}
	sp, err := p.pd().AdvanceGC(ctx, now)
	if err != nil {
		return 0, fmt.Errorf("gc: advance safepoint: %w", err)
	}
	if sp == 0 {
		return 0, nil
	}
	if p.Recovering() {
		// Stores in recovery mode run no GC: the data is not the
		// cluster's until the recovery ends.
		p.log.Debug("gc skipped: snapshot recovery", "safepoint", sp)
		return sp, nil
	}
	if !p.GCEnabled() {
		p.log.Debug("gc skipped: every running store has gc.ratio-threshold disabled", "safepoint", sp)
		return sp, nil
	}
	if _, err := p.Engine.GC(sp); err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	return sp, nil
}

// GCEnabled reports whether the engine's GC runs: whether some running
// store has a gc.ratio-threshold that lets its compaction filter collect
// (TiKV src/server/gc_worker/compaction_filter.rs check_need_gc: negative
// or +inf disables it).
//
// In TiKV every store collects its own copy of each region it holds, and
// the copy a read sees is the leader's, which can move to any peer. So a
// version one peer's GC removed can come back into view on any leader
// change: the data is safe only while no peer's GC runs. The playground
// holds one copy for all stores and gives every store a peer of every
// region, so it collects that copy unless every running store has GC
// disabled. A stopped store runs no compaction; when it starts again its
// threshold is the default, and GC runs again. This is the strictest
// reading: a restore must disable GC on every store, and again after a
// store restarts.
func (p *Playground) GCEnabled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.stores {
		if tikv.GCEnabled(n.srv.GCRatioThreshold()) {
			return true
		}
	}
	return false
}

func (p *Playground) gcLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if sp, err := p.RunGC(ctx); err != nil {
				if ctx.Err() == nil {
					p.log.Warn("gc round failed", "error", err)
				}
			} else {
				p.log.Debug("gc round", "safepoint", sp)
			}
		}
	}
}

// Close stops everything and flushes the data to Dir.
func (p *Playground) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	nodes := p.stores
	p.stores = map[uint64]*storeNode{}
	p.mu.Unlock()
	p.cancel()
	var errs []error
	if p.ctl != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, p.ctl.Shutdown(sctx))
		cancel()
	}
	for _, n := range nodes {
		n.cdc.Close()
		n.srv.Stop()
	}
	p.wg.Wait()
	p.mu.Lock()
	rec := p.recovery
	p.mu.Unlock()
	if rec != nil {
		rec.mu.Lock()
		rec.closeEngines() // the store copies of a recovery that did not finish
		rec.mu.Unlock()
	}
	if srv := p.pd(); srv != nil {
		errs = append(errs, srv.Close())
	}
	if p.Engine != nil {
		errs = append(errs, p.Engine.Close())
	}
	if p.tmpPD && p.pdDir != "" {
		errs = append(errs, os.RemoveAll(p.pdDir))
	}
	return errors.Join(errs...)
}
