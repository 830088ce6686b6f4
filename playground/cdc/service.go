package cdc

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// TiKV's CDC defaults and channel limits (src/config/mod.rs CdcConfig,
// components/cdc/src/channel.rs).
const (
	DefaultMinTSInterval     = time.Second
	DefaultMemoryQuota       = 512 << 20 // cdc.sink-memory-quota
	DefaultScanConcurrency   = 6         // cdc.incremental-scan-concurrency
	DefaultPendingScansLimit = 10000     // cdc.incremental-scan-concurrency-limit

	eventMaxBytes  = 32 * 1024 // CDC_EVENT_MAX_BYTES: rows in one Event
	eventMaxCount  = 64        // CDC_EVENT_MAX_COUNT: Events in one ChangeDataEvent
	respMaxBytes   = 6 << 20   // CDC_RESP_MAX_BYTES: one ChangeDataEvent
	scanChannelCap = 128       // CDC_CHANNLE_CAPACITY: queued scan Events per stream

	featuresKey        = "features"
	featureMultiplexed = "stream-multiplexing"
)

// TSO hands out timestamps (PD's TSO).
type TSO interface {
	TS(ctx context.Context) (uint64, error)
}

// Engine is what the service needs of the MVCC engine: an observer of every
// applied command registered atomically with a snapshot at that point.
// *mvcc.Engine implements it.
type Engine interface {
	Observe(fn mvcc.Observer) (mvcc.Snapshot, func())
}

// MaxTSUpdater is implemented by engines that keep TiKV's concurrency
// manager max_ts (*mvcc.Engine does). When Config.Engine implements it,
// every resolved-ts round pushes max_ts to the round's TSO before reading
// any lock, as TiKV does, so an async-commit or 1PC transaction prewritten
// later commits above the resolved ts sent.
type MaxTSUpdater interface {
	UpdateMaxTS(ts uint64)
}

// ApplyBarrier is implemented by engines whose Snapshot serializes with
// applied commands (*mvcc.Engine takes its write lock). A prewrite may have
// read max_ts just before UpdateMaxTS and not be applied yet: it computes
// its 1PC/async-commit ts from the old max_ts and holds no lock the round
// could see (TiKV covers that window with the concurrency manager's
// in-memory locks). Taking a snapshot right after UpdateMaxTS waits for
// such a command, whose rows are then queued before the round's resolved
// ts.
type ApplyBarrier interface {
	Snapshot() mvcc.Snapshot
}

// MemLockTracker is implemented by engines that keep in-memory locks of
// async-commit/1PC prewrites in flight outside the observed apply path;
// the round's ts is lowered to the oldest of them. (*mvcc.Engine applies
// such prewrites atomically under its write lock and needs none.)
type MemLockTracker interface {
	GlobalMinLockTS() (uint64, bool)
}

// Config configures a store's CDC service.
type Config struct {
	StoreID   uint64
	ClusterID uint64
	Cluster   *cluster.Cluster
	Engine    Engine
	TSO       TSO
	Logger    hclog.Logger
	// MinTSInterval is cdc.min-ts-interval (default 1s).
	MinTSInterval time.Duration
	// MemoryQuota bounds live rows queued on all streams of the store
	// (cdc.sink-memory-quota, default 512 MiB).
	MemoryQuota int64
	// ScanConcurrency is the number of incremental scans running at once
	// (default 6).
	ScanConcurrency int
	// PendingScansLimit is the number of registrations whose scan is queued
	// or running beyond which Register gets ServerIsBusy (default 10000).
	PendingScansLimit int
	// Version is the TiKV version the service behaves as (default
	// DefaultVersion). Below 7.3 (tikv PR #14923) there is no Deregister
	// and no EventFeedV2, and a stream holds one subscription per region.
	Version string
}

// DefaultVersion is the TiKV version of a Service whose Config names none.
const DefaultVersion = "8.5.0"

// Service is one store's cdcpb.ChangeData server.
type Service struct {
	cdcpb.UnimplementedChangeDataServer

	cfg     Config
	log     hclog.Logger
	maxTS   MaxTSUpdater   // nil unless the engine keeps max_ts
	memLock MemLockTracker // nil unless the engine keeps in-memory locks
	barrier ApplyBarrier   // nil unless the engine has one
	unwatch func()

	// gen counts topology events; a capture taken under cluster.View is
	// valid only when gen did not move since the region was read.
	gen atomic.Uint64
	// quota is the store-wide live-row memory in use.
	quota   atomic.Int64
	pending atomic.Int64 // registrations whose scan has not finished
	scanSem chan struct{}
	// v73 is set from TiKV 7.3 on: Deregister, EventFeedV2, subscriptions
	// keyed by (request_id, region_id).
	v73       bool
	registers atomic.Uint64 // Register requests received

	// dmu guards delegates (taken after a conn's mu, never before).
	dmu       sync.Mutex
	delegates map[uint64]*delegate

	mu     sync.Mutex
	conns  map[*conn]struct{}
	down   bool // this store is down: streams fail, new ones are refused
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

var _ cdcpb.ChangeDataServer = (*Service)(nil)

// New creates the service and starts its resolved-ts loop.
func New(cfg Config) *Service {
	if cfg.MinTSInterval <= 0 {
		cfg.MinTSInterval = DefaultMinTSInterval
	}
	if cfg.MemoryQuota <= 0 {
		cfg.MemoryQuota = DefaultMemoryQuota
	}
	if cfg.ScanConcurrency <= 0 {
		cfg.ScanConcurrency = DefaultScanConcurrency
	}
	if cfg.PendingScansLimit <= 0 {
		cfg.PendingScansLimit = DefaultPendingScansLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Version == "" {
		cfg.Version = DefaultVersion
	}
	var v semver
	norm, err := ParseVersion(cfg.Version)
	if err == nil {
		v, _ = parseSemver(norm)
	}
	ok := err == nil
	s := &Service{
		cfg:     cfg,
		log:     cfg.Logger,
		scanSem: make(chan struct{}, cfg.ScanConcurrency),
		conns:   map[*conn]struct{}{},
		stop:    make(chan struct{}),
		v73:     ok && !v.less(semver{7, 3, 0, ""}),

		delegates: map[uint64]*delegate{},
	}
	s.maxTS, _ = cfg.Engine.(MaxTSUpdater)
	s.memLock, _ = cfg.Engine.(MemLockTracker)
	s.barrier, _ = cfg.Engine.(ApplyBarrier)
	if st, err := cfg.Cluster.Store(cfg.StoreID); err == nil && !st.Up {
		s.down = true
	}
	s.unwatch = cfg.Cluster.Watch(s.onTopology)
	s.wg.Add(1)
	go s.resolvedLoop()
	return s
}

// Register registers the service on a gRPC server.
func (s *Service) Register(g *grpc.Server) { cdcpb.RegisterChangeDataServer(g, s) }

// Close ends every stream with UNAVAILABLE (the store stops) and waits for
// the service's goroutines.
func (s *Service) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conns := s.connList()
	s.mu.Unlock()
	s.unwatch()
	close(s.stop)
	for _, c := range conns {
		c.fail(status.Error(codes.Unavailable, "store is stopping"))
	}
	s.wg.Wait()
}

func (s *Service) connList() []*conn {
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// EventFeed is the original stream: features come from the first request's
// header only.
func (s *Service) EventFeed(stream cdcpb.ChangeData_EventFeedServer) error {
	return s.serve(stream, false)
}

// EventFeedV2 also takes explicit features from the "features" metadata.
// TiKV before 7.3 does not implement it.
func (s *Service) EventFeedV2(stream cdcpb.ChangeData_EventFeedV2Server) error {
	if !s.v73 {
		return status.Error(codes.Unimplemented, "EventFeedV2 is not implemented")
	}
	multiplexing := false
	md, _ := metadata.FromIncomingContext(stream.Context())
	for _, v := range md.Get(featuresKey) {
		var unknown []string
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == featureMultiplexed {
				multiplexing = true
			} else {
				unknown = append(unknown, f)
			}
		}
		if len(unknown) > 0 {
			return status.Error(codes.Unimplemented, strings.Join(unknown, ","))
		}
	}
	return s.serve(stream, multiplexing)
}

// eventStream is what EventFeed and EventFeedV2 streams share.
type eventStream interface {
	Send(*cdcpb.ChangeDataEvent) error
	Recv() (*cdcpb.ChangeDataRequest, error)
	Context() context.Context
}

func (s *Service) serve(stream eventStream, multiplexing bool) error {
	c := newConn(s, stream, multiplexing)
	s.mu.Lock()
	if s.closed || s.down {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "store is not serving")
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	go func() {
		defer s.wg.Done()
		c.recvLoop()
	}()
	return c.sendLoop()
}

// go runs fn on a goroutine the service owns.
func (s *Service) spawn(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// onTopology is the cluster watcher. It runs under the cluster's write
// lock: it only queues errors, never blocks.
func (s *Service) onTopology(ev cluster.Event) {
	s.gen.Add(1)
	s.mu.Lock()
	switch ev.Kind {
	case cluster.EventStoreDown:
		if ev.StoreID == s.cfg.StoreID {
			s.down = true
		}
	case cluster.EventStoreUp:
		if ev.StoreID == s.cfg.StoreID {
			s.down = false
		}
	}
	conns := s.connList()
	s.mu.Unlock()
	if ev.Kind == cluster.EventStoreDown && ev.StoreID == s.cfg.StoreID {
		for _, c := range conns {
			c.fail(status.Error(codes.Unavailable, "store is down"))
		}
		return
	}
	for _, c := range conns {
		c.onTopology(ev)
	}
}

// Registers returns how many Register requests the service received (on
// TiKV before 7.3 every request is one, Deregister included).
func (s *Service) Registers() uint64 { return s.registers.Load() }

// quotaAlloc charges n bytes of live rows; false when the quota is full.
func (s *Service) quotaAlloc(n int64) bool {
	if s.quota.Add(n) > s.cfg.MemoryQuota {
		s.quota.Add(-n)
		return false
	}
	return true
}

func (s *Service) quotaFree(n int64) { s.quota.Add(-n) }

// resolvedLoop advances resolved ts every MinTSInterval.
func (s *Service) resolvedLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.MinTSInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.stop
		cancel()
	}()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.advance(ctx)
	}
}

// advance runs one resolved-ts round. The TSO is taken before any lock set
// is read: a prewrite applied after the read gets its commit ts after the
// TSO, so the guarantee holds.
func (s *Service) advance(ctx context.Context) {
	minTS, err := s.roundTS(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("get tso for resolved ts", "error", err)
		}
		return
	}
	s.mu.Lock()
	conns := s.connList()
	s.mu.Unlock()
	for _, c := range conns {
		c.advance(minTS)
	}
}

// roundTS is the upper bound of a resolved-ts round: a fresh TSO, taken
// before any lock is read, with max_ts pushed to it and the apply barrier
// passed, lowered to the oldest in-memory lock. Every lock read after it
// lowers it further.
func (s *Service) roundTS(ctx context.Context) (uint64, error) {
	ts, err := s.cfg.TSO.TS(ctx)
	if err != nil {
		return 0, err
	}
	if ts == 0 {
		return 0, errors.New("tso returned 0")
	}
	if s.maxTS != nil {
		s.maxTS.UpdateMaxTS(ts)
		if s.barrier != nil {
			s.barrier.Snapshot().Release()
		}
	}
	if s.memLock != nil {
		if l, ok := s.memLock.GlobalMinLockTS(); ok && l < ts {
			ts = l
		}
	}
	return ts, nil
}

// MinResolvedTS computes the store's min resolved ts over the raw key
// ranges of the regions it leads, as TiKV's resolved-ts endpoint does for
// pd.report-min-resolved-ts-interval: the round's ts (roundTS), lowered to
// the start ts of every lock in the ranges read after it. No transaction
// can commit at or below it: a lock read commits above its start ts, and a
// prewrite applied later commits above the round's TSO.
func (s *Service) MinResolvedTS(ctx context.Context, ranges [][2][]byte) (uint64, error) {
	ts, err := s.roundTS(ctx)
	if err != nil {
		return 0, err
	}
	var snap mvcc.Snapshot
	if s.barrier != nil {
		snap = s.barrier.Snapshot()
	} else {
		var cancel func()
		snap, cancel = s.cfg.Engine.Observe(func(*mvcc.Command) {})
		cancel()
	}
	defer snap.Release()
	for _, r := range ranges {
		if err := snap.Locks(r[0], r[1], func(l *mvcc.Lock) error {
			ts = min(ts, l.StartTS)
			return nil
		}); err != nil {
			return 0, err
		}
	}
	return ts, nil
}

// TrackedLock is one lock a subscription's resolved-ts tracker holds.
type TrackedLock struct {
	RegionID, RequestID uint64
	Key                 []byte
	StartTS             uint64
	AdvancedTo          uint64 // the subscription's resolved ts so far
}

// TrackedLocks lists, for diagnosis, the locks every subscription of the
// store tracks: a lock here that the engine no longer holds is what keeps
// a region's resolved ts from moving.
func (s *Service) TrackedLocks() []TrackedLock {
	s.mu.Lock()
	conns := s.connList()
	s.mu.Unlock()
	var out []TrackedLock
	for _, c := range conns {
		c.mu.Lock()
		for k, sb := range c.subs {
			for key, ts := range sb.locks {
				out = append(out, TrackedLock{RegionID: k.regionID, RequestID: k.requestID, Key: []byte(key), StartTS: ts, AdvancedTo: sb.advancedTo})
			}
		}
		c.mu.Unlock()
	}
	return out
}
