package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	pd "github.com/tikv/pd/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
)

// ErrUnavailable: the target cluster (PD or a store) could not be reached.
var ErrUnavailable = connector.ErrUnavailable

// target is the cluster restore writes into: PD for the topology and TSO,
// each store's import_sstpb service for the data (TIKV-PROTOCOLS.md §3.4:
// Write builds an SST on a store, MultiIngest at the leader makes it
// visible).
type target struct {
	pd        pd.Client
	clusterID uint64
	log       hclog.Logger
	tls       connector.TLS
	http      *http.Client // PD's HTTP API and the stores' status ports

	mu      sync.Mutex
	regions []*region // sorted by start, disjoint
	conns   map[uint64]*grpc.ClientConn

	retryPolicy
	leaderOnly   bool          // write SSTs to the leader's store only
	beforeIngest func(*region) // tests only
}

// retryPolicy is how the writes retry (writeRegion, locateRetry), apart
// from the cluster they go to, so that the same policy runs over an
// in-memory cluster in the tests.
type retryPolicy struct {
	// maxAttempts bounds the tries of one chunk; backoff starts at
	// minBackoff and doubles up to maxBackoff.
	maxAttempts            int
	minBackoff, maxBackoff time.Duration
	// busyTimeout bounds the time one region's ingest keeps meeting
	// ServerIsBusy; its retries back off from busyMinBackoff doubling to
	// busyMaxBackoff and are not attempts.
	busyTimeout                    time.Duration
	busyMinBackoff, busyMaxBackoff time.Duration
}

// Defaults of the busy retries: BR's log restore retries for about 10 min.
const (
	DefaultBusyTimeout = 10 * time.Minute
	busyMinBackoff     = 500 * time.Millisecond
	busyMaxBackoff     = 10 * time.Second
)

// region is one target region as PD reported it, with raw key bounds.
type region struct {
	id         uint64
	epoch      *metapb.RegionEpoch
	peers      []*metapb.Peer
	leader     *metapb.Peer
	start, end []byte // raw; end empty = +inf
}

func (r *region) contains(key []byte) bool {
	return bytes.Compare(key, r.start) >= 0 && keyspace.BeforeEnd(key, r.end)
}

func dialTarget(ctx context.Context, addrs []string, tls connector.TLS, log hclog.Logger) (*target, error) {
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: no PD address", ErrUnavailable)
	}
	hc, err := connector.HTTPClient(tls, 10*time.Second)
	if err != nil {
		return nil, err
	}
	cli, err := connector.PD(ctx, connector.Config{PDAddrs: addrs, TLS: tls, Timeout: 10 * time.Second, Component: "pitr-restore"})
	if err != nil {
		return nil, err
	}
	return &target{
		pd: cli, clusterID: cli.GetClusterID(ctx), log: log, tls: tls, http: hc,
		conns: map[uint64]*grpc.ClientConn{},
		retryPolicy: retryPolicy{
			maxAttempts: 30, minBackoff: 50 * time.Millisecond, maxBackoff: 2 * time.Second,
			busyTimeout: DefaultBusyTimeout, busyMinBackoff: busyMinBackoff, busyMaxBackoff: busyMaxBackoff,
		},
	}, nil
}

func (t *target) Close() {
	t.mu.Lock()
	for _, c := range t.conns {
		_ = c.Close()
	}
	t.conns = nil
	t.mu.Unlock()
	t.pd.Close()
}

// pdRetry runs a PD call, retrying a few times: the pinned PD client may
// fail its first calls right after connecting (Canceled while its service
// discovery settles).
func pdRetry[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var v T
	var err error
	delay := 50 * time.Millisecond
	for i := 0; i < 10; i++ {
		if v, err = f(); err == nil || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return v, ctx.Err()
		}
		delay = min(2*delay, time.Second)
	}
	return v, err
}

// ts returns a fresh timestamp from the target's TSO.
func (t *target) ts(ctx context.Context) (uint64, error) { return connector.GetTS(ctx, t.pd) }

// locate returns the cached region holding key, asking PD on a miss.
func (t *target) locate(ctx context.Context, key []byte) (*region, error) {
	t.mu.Lock()
	if r := t.cachedLocked(key); r != nil {
		t.mu.Unlock()
		return r, nil
	}
	t.mu.Unlock()
	rs, err := pdRetry(ctx, func() ([]*region, error) { return t.scanRegions(ctx, key) })
	if err != nil {
		return nil, fmt.Errorf("%w: scan regions from PD: %v", ErrUnavailable, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range rs {
		t.insertLocked(r)
	}
	if r := t.cachedLocked(key); r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("no region with a leader holds key %s yet", keyspace.FormatKey(key))
}

// locateRetry is locate with the chunk retry policy (a region may have no
// leader for a moment).
func (t *target) locateRetry(ctx context.Context, key []byte) (*region, error) {
	return locateRetry(ctx, t, &t.retryPolicy, key)
}

func locateRetry(ctx context.Context, ops regionOps, p *retryPolicy, key []byte) (*region, error) {
	for attempt := 1; ; attempt++ {
		r, err := ops.locate(ctx, key)
		if err == nil || ctx.Err() != nil {
			return r, err
		}
		if attempt >= p.maxAttempts {
			return nil, err
		}
		if err := p.backoff(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

func (t *target) scanRegions(ctx context.Context, key []byte) ([]*region, error) {
	rs, err := t.pd.ScanRegions(ctx, keyspace.EncodeKey(key), nil, 64)
	if err != nil {
		return nil, err
	}
	var out []*region
	for _, r := range rs {
		if r.Meta == nil || r.Leader == nil || r.Leader.GetStoreId() == 0 {
			continue // no leader yet: a later retry finds one
		}
		// Strict: a boundary with bytes after the key has no exact raw key,
		// and writing by a guessed one would send keys to the wrong region.
		raw, err := keyspace.DecodeRange(keyspace.Range{Start: r.Meta.GetStartKey(), End: r.Meta.GetEndKey()})
		if err != nil {
			return nil, fmt.Errorf("region %d: %w", r.Meta.GetId(), err)
		}
		out = append(out, &region{id: r.Meta.GetId(), epoch: r.Meta.GetRegionEpoch(), peers: r.Meta.GetPeers(),
			leader: r.Leader, start: raw.Start, end: raw.End})
	}
	return out, nil
}

func (t *target) cachedLocked(key []byte) *region {
	i, _ := slices.BinarySearchFunc(t.regions, key, func(r *region, k []byte) int {
		if bytes.Compare(r.start, k) > 0 {
			return 1
		}
		return -1
	})
	if i > 0 && t.regions[i-1].contains(key) {
		return t.regions[i-1]
	}
	return nil
}

// insertLocked adds r, dropping the cached regions it overlaps.
func (t *target) insertLocked(r *region) {
	out := t.regions[:0:0]
	for _, o := range t.regions {
		if keyspace.BeforeEnd(o.start, r.end) && keyspace.BeforeEnd(r.start, o.end) {
			continue
		}
		out = append(out, o)
	}
	i, _ := slices.BinarySearchFunc(out, r.start, func(o *region, k []byte) int { return bytes.Compare(o.start, k) })
	t.regions = slices.Insert(out, i, r)
}

// invalidate drops a region from the cache.
func (t *target) invalidate(r *region) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.regions = slices.DeleteFunc(t.regions, func(o *region) bool { return o == r || o.id == r.id })
}

// conn returns a connection to a store, resolving its address through PD.
func (t *target) conn(ctx context.Context, storeID uint64) (*grpc.ClientConn, error) {
	t.mu.Lock()
	c := t.conns[storeID]
	t.mu.Unlock()
	if c != nil {
		return c, nil
	}
	st, err := pdRetry(ctx, func() (*metapb.Store, error) { return t.pd.GetStore(ctx, storeID) })
	if err != nil {
		return nil, fmt.Errorf("%w: store %d address: %v", ErrUnavailable, storeID, err)
	}
	c, err = connector.Dial(st.GetAddress(), t.tls,
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20), grpc.ForceCodec(gogoCodec{})),
		grpc.WithInitialWindowSize(8<<20), grpc.WithInitialConnWindowSize(16<<20))
	if err != nil {
		return nil, fmt.Errorf("dial store %d at %s: %w", storeID, st.GetAddress(), err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.conns[storeID]; old != nil {
		_ = c.Close()
		return old, nil
	}
	t.conns[storeID] = c
	return c, nil
}

// gogoCodec marshals kvproto messages with their generated (gogo) code
// directly: the default codec wraps them for the protobuf v2 runtime first,
// which costs as much again per message, and restore sends a message per
// commit_ts. Same wire format, same content type.
type gogoCodec struct{}

type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

func (gogoCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return nil, fmt.Errorf("gogo codec: cannot marshal %T", v)
	}
	return m.Marshal()
}

func (gogoCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return fmt.Errorf("gogo codec: cannot unmarshal into %T", v)
	}
	return m.Unmarshal(data)
}

func (gogoCodec) Name() string { return "proto" }

// dropConn forgets a store's connection (its address may have changed).
func (t *target) dropConn(storeID uint64) {
	t.mu.Lock()
	c := t.conns[storeID]
	delete(t.conns, storeID)
	t.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// maybeDropConn forgets a store's connection when err says the store is
// unreachable, so that the next call resolves its address again.
func (t *target) maybeDropConn(storeID uint64, err error) {
	if status.Code(err) == codes.Unavailable {
		t.dropConn(storeID)
	}
}

// regionError is a region error (NotLeader, EpochNotMatch, ...) from a
// store: the cached region is stale, refresh and retry.
type regionError struct {
	region uint64
	err    *errorpb.Error
}

func (e *regionError) Error() string {
	return fmt.Sprintf("region %d: %s", e.region, strings.TrimSpace(e.err.GetMessage()))
}

// backoff sleeps before attempt n (n ≥ 1).
func (p *retryPolicy) backoff(ctx context.Context, n int) error {
	return p.sleep(ctx, min(p.minBackoff<<min(n-1, 10), p.maxBackoff))
}

// sleep waits d or until ctx ends.
func (p *retryPolicy) sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkEmpty returns ErrTargetNotEmpty when the target holds any key in
// ranges visible at ts (a lock counts too: someone is writing there).
func (t *target) checkEmpty(ctx context.Context, ranges []keyspace.Range, ts uint64) error {
	for _, rg := range ranges {
		key := rg.Start
		for attempt := 1; ; {
			reg, err := t.locate(ctx, key)
			if err == nil {
				end := rg.End
				if keyspace.CompareEnds(reg.end, end) < 0 {
					end = reg.end
				}
				var found []byte
				found, err = t.scanOne(ctx, reg, key, end, ts)
				if err == nil {
					if found != nil {
						return fmt.Errorf("%w: it holds key %s in the task range %s (use --force to write anyway)",
							ErrTargetNotEmpty, keyspace.FormatKey(found), rg)
					}
					if len(reg.end) == 0 || keyspace.CompareEnds(reg.end, rg.End) >= 0 {
						break
					}
					key, attempt = reg.end, 1
					continue
				}
				var re *regionError
				if errors.As(err, &re) {
					t.invalidate(reg)
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if attempt >= t.maxAttempts {
				return fmt.Errorf("check that the target is empty: %w", err)
			}
			if err := t.backoff(ctx, attempt); err != nil {
				return err
			}
			attempt++
		}
	}
	return nil
}

// scanOne returns the first key of [start, end) in the region visible at ts.
func (t *target) scanOne(ctx context.Context, reg *region, start, end []byte, ts uint64) ([]byte, error) {
	c, err := t.conn(ctx, reg.leader.GetStoreId())
	if err != nil {
		return nil, err
	}
	resp, err := tikvpb.NewTikvClient(c).KvScan(ctx, &kvrpcpb.ScanRequest{
		Context:  &kvrpcpb.Context{RegionId: reg.id, RegionEpoch: reg.epoch, Peer: reg.leader},
		StartKey: start, EndKey: end, Limit: 1, Version: ts,
	})
	if err != nil {
		t.maybeDropConn(reg.leader.GetStoreId(), err)
		return nil, &regionError{region: reg.id, err: &errorpb.Error{Message: err.Error()}}
	}
	if re := resp.GetRegionError(); re != nil {
		return nil, &regionError{region: reg.id, err: re}
	}
	if ke := resp.GetError(); ke != nil {
		if l := ke.GetLocked(); l != nil {
			return l.GetKey(), nil
		}
		return nil, fmt.Errorf("scan target: %s", ke.String())
	}
	for _, p := range resp.GetPairs() {
		if p.GetError() != nil {
			if l := p.GetError().GetLocked(); l != nil {
				return l.GetKey(), nil
			}
		}
		return p.GetKey(), nil
	}
	return nil, nil
}

// ErrLeaderOnly: Options.LeaderOnly was asked of a target that is not a
// playground.
var ErrLeaderOnly = errors.New("leader-only restore refused")

// playgroundLabel is the store label the playground reports on every store
// (playground/cluster.PlaygroundLabel; restore never imports the
// playground). Its stores share one engine, so an SST on the leader alone
// is enough there.
const playgroundLabel = "pitr-playground"

// checkLeaderOnly refuses LeaderOnly unless every store of the target is a
// playground store. On a real TiKV each follower applies an ingest from its
// own copy of the SST and panics when it has none (raftstore apply.rs
// handle_ingest_sst), so a leader-only restore would crash the target's
// TiKVs. The label is an honest marker, not a guarantee: someone could set
// it on a real TiKV, which is why LeaderOnly is not a command-line option.
func (t *target) checkLeaderOnly(ctx context.Context) error {
	stores, err := allStores(ctx, t.pd)
	if err != nil {
		return err
	}
	return leaderOnlyAllowed(stores)
}

func leaderOnlyAllowed(stores []*metapb.Store) error {
	if len(stores) == 0 {
		return fmt.Errorf("%w: the target has no stores", ErrLeaderOnly)
	}
	for _, st := range stores {
		ok := false
		for _, l := range st.GetLabels() {
			ok = ok || l.GetKey() == playgroundLabel
		}
		if !ok {
			return fmt.Errorf("%w: store %d (%s) is not a playground store; a TiKV follower without its copy of an SST panics at the ingest",
				ErrLeaderOnly, st.GetId(), st.GetAddress())
		}
	}
	return nil
}
