package volsnap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/metapb"
	recoverpb "github.com/pingcap/kvproto/pkg/recoverdatapb"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/restore"
)

// ErrRecovery: the stores' regions cannot be recovered into one cluster
// (a hole in the key space, a region no store holds), or a store failed a
// step of the protocol.
var ErrRecovery = errors.New("volume recovery failed")

// ErrNotRecovering: PD is not in snapshot-recovery mode, so the stores
// did not start in recovery mode.
var ErrNotRecovering = errors.New("not in snapshot recovery")

// markerPath is PD's snapshot-recovery marker (tikv/pd server/api/admin.go:
// GET answers {"marked": bool}, POST sets it, DELETE clears it). TiKV asks
// PD at start (pdpb IsSnapshotRecovering) and, when marked, starts in
// recovery mode (tikv components/snap_recovery/src/init_cluster.rs).
const markerPath = "/pd/api/v1/admin/cluster/markers/snapshot-recovering"

// pdHTTP is PD's HTTP API, tried on each address in turn.
type pdHTTP struct {
	hc    *http.Client
	tls   connector.TLS
	addrs []string
}

func (p pdHTTP) call(ctx context.Context, method, path string, body []byte, out any) error {
	var errs []error
	for _, a := range p.addrs {
		err := restore.CallJSON(ctx, p.hc, method, connector.URL(p.tls, strings.TrimSuffix(a, "/"), path), body, out)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, errors.Join(errs...))
}

// Marked reports PD's snapshot-recovery marker.
func (p pdHTTP) marked(ctx context.Context) (bool, error) {
	var out struct {
		Marked bool `json:"marked"`
	}
	if err := p.call(ctx, http.MethodGet, markerPath, nil, &out); err != nil {
		return false, err
	}
	return out.Marked, nil
}

// storeMeta is one store's report.
type storeMeta struct {
	store *metapb.Store
	metas []*recoverpb.RegionMeta
}

// peerReport is one peer as a store reported it.
type peerReport struct {
	*recoverpb.RegionMeta
	storeID uint64
}

// plan is the recovery decision: per store the commands to send.
type plan struct {
	leaders    map[uint64]uint64 // region → store
	commands   map[uint64][]*recoverpb.RecoverRegionRequest
	maxAllocID uint64
	regions    int
	tombstoned int
}

// newer orders peers by last log term, then last index, then commit
// index: the leader comes from the peers with the newest log (BR's
// br/pkg/restore/data/recover.go MakeRecoveryPlan, after its design doc).
func newer(a, b *peerReport) int {
	for _, d := range [][2]uint64{{a.GetLastLogTerm(), b.GetLastLogTerm()}, {a.GetLastIndex(), b.GetLastIndex()}, {a.GetCommitIndex(), b.GetCommitIndex()}} {
		switch {
		case d[0] > d[1]:
			return 1
		case d[0] < d[1]:
			return -1
		}
	}
	return 0
}

// makePlan elects each region's leader and drops stale regions: a region
// whose range overlaps one of a higher version (a split or merge that
// some peers had applied and others had not) is tombstoned on every store
// holding it. The regions kept must tile the key space: a hole would be
// data no store has.
func makePlan(stores []storeMeta) (*plan, error) {
	byRegion := map[uint64][]*peerReport{}
	p := &plan{leaders: map[uint64]uint64{}, commands: map[uint64][]*recoverpb.RecoverRegionRequest{}}
	for _, s := range stores {
		p.maxAllocID = max(p.maxAllocID, s.store.GetId())
		for _, m := range s.metas {
			byRegion[m.GetRegionId()] = append(byRegion[m.GetRegionId()], &peerReport{RegionMeta: m, storeID: s.store.GetId()})
			p.maxAllocID = max(p.maxAllocID, m.GetRegionId(), m.GetPeerId())
		}
	}
	type region struct {
		id   uint64
		best *peerReport
		all  []*peerReport
	}
	var regions []region
	for id, peers := range byRegion {
		best := peers[0]
		for _, pr := range peers[1:] {
			if newer(pr, best) > 0 {
				best = pr
			}
		}
		regions = append(regions, region{id: id, best: best, all: peers})
	}
	// Highest version first; ties by id, so the plan is the same each run.
	sort.Slice(regions, func(i, j int) bool {
		if a, b := regions[i].best.GetVersion(), regions[j].best.GetVersion(); a != b {
			return a > b
		}
		return regions[i].id < regions[j].id
	})
	var kept []keyspace.Range
	load := map[uint64]int{}
	for _, r := range regions {
		rg := keyspace.Range{Start: r.best.GetStartKey(), End: r.best.GetEndKey()}
		overlaps := false
		for _, k := range kept {
			if rangesOverlap(k, rg) {
				overlaps = true
				break
			}
		}
		if overlaps {
			for _, pr := range r.all {
				p.commands[pr.storeID] = append(p.commands[pr.storeID], &recoverpb.RecoverRegionRequest{RegionId: r.id, Tombstone: true})
			}
			p.tombstoned++
			continue
		}
		kept = append(kept, rg)
		// Among the peers as new as the best, the store leading the fewest
		// regions so far (BR balances leaders the same way).
		leader := r.best
		for _, pr := range r.all {
			if newer(pr, r.best) == 0 && load[pr.storeID] < load[leader.storeID] {
				leader = pr
			}
		}
		load[leader.storeID]++
		p.leaders[r.id] = leader.storeID
		p.commands[leader.storeID] = append(p.commands[leader.storeID], &recoverpb.RecoverRegionRequest{RegionId: r.id, AsLeader: true})
		p.regions++
	}
	sort.Slice(kept, func(i, j int) bool { return bytes.Compare(kept[i].Start, kept[j].Start) < 0 })
	var at []byte
	for i, k := range kept {
		if !bytes.Equal(k.Start, at) {
			return nil, fmt.Errorf("%w: no store holds a region for [%x, %x): the volumes miss data there", ErrRecovery, at, k.Start)
		}
		if len(k.End) == 0 {
			if i != len(kept)-1 {
				return nil, fmt.Errorf("%w: regions overlap after [%x, +inf)", ErrRecovery, k.Start)
			}
			return p, nil
		}
		at = k.End
	}
	return nil, fmt.Errorf("%w: no store holds a region for [%x, +inf): the volumes miss data there", ErrRecovery, at)
}

// rangesOverlap reports whether two ranges (empty end: +inf) meet.
func rangesOverlap(a, b keyspace.Range) bool {
	aEndsBeforeB := len(a.End) > 0 && bytes.Compare(a.End, b.Start) <= 0
	bEndsBeforeA := len(b.End) > 0 && bytes.Compare(b.End, a.Start) <= 0
	return !aEndsBeforeB && !bEndsBeforeA
}

// RecoverOptions configure Recover.
type RecoverOptions struct {
	PD      PD
	PDAddrs []string
	TLS     connector.TLS
	HTTP    *http.Client
	// ResolvedTS: every version after it is deleted.
	ResolvedTS uint64
	// Stores is how many stores the backup had: Recover waits (up to
	// StoreWait) until PD lists that many.
	Stores    int
	StoreWait time.Duration
	Progress  io.Writer
	Logger    hclog.Logger
	// Mark, when set, runs after the stores resolved their data and
	// before PD's marker is cleared (RestoreData records the recovery).
	Mark func(ctx context.Context) error
}

// RecoverResult is what Recover did.
type RecoverResult struct {
	Stores, Regions, Tombstoned int
	ResolvedKeys                uint64
	Duration                    time.Duration
}

// Recover runs TiKV's snapshot-recovery protocol (kvproto recoverdatapb;
// BR's br/pkg/restore/data) on stores started on volumes restored from
// snapshots, in recovery mode: read every store's region metas, elect
// each region's leader from the peers with the newest log, tell the
// stores (RecoverRegion), wait until every peer has applied its log
// (WaitApply), delete every version after ResolvedTS and every lock
// (ResolveKvData), set PD's base alloc id above every id the stores hold,
// and clear PD's marker: the stores leave recovery mode holding the
// cluster as it was at ResolvedTS.
func Recover(ctx context.Context, o RecoverOptions) (*RecoverResult, error) {
	start := time.Now()
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.HTTP == nil {
		o.HTTP = http.DefaultClient
	}
	if o.StoreWait <= 0 {
		o.StoreWait = 2 * time.Minute
	}
	log := o.Logger.Named("volume-recovery")
	ph := pdHTTP{hc: o.HTTP, tls: o.TLS, addrs: o.PDAddrs}
	marked, err := ph.marked(ctx)
	if err != nil {
		return nil, err
	}
	if !marked {
		return nil, fmt.Errorf("%w: PD is not marked snapshot-recovering, so its stores did not start in recovery mode: run `pitr restore volume --prepare` before starting the stores on the volumes it makes", ErrNotRecovering)
	}
	stores, err := waitStores(ctx, o.PD, o.Stores, o.StoreWait)
	if err != nil {
		return nil, err
	}
	say := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "volume recovery: "+format+"\n", args...)
		}
	}
	conns := make([]*grpc.ClientConn, len(stores))
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for i, s := range stores {
		if conns[i], err = connector.Dial(s.GetAddress(), o.TLS); err != nil {
			return nil, fmt.Errorf("%w: dial store %d at %s: %v", ErrUnavailable, s.GetId(), s.GetAddress(), err)
		}
	}
	client := func(i int) recoverpb.RecoverDataClient { return recoverpb.NewRecoverDataClient(conns[i]) }

	// 1. Region metas.
	metas := make([]storeMeta, len(stores))
	if err := eachStore(stores, func(i int, s *metapb.Store) error {
		stream, err := client(i).ReadRegionMeta(ctx, &recoverpb.ReadRegionMetaRequest{StoreId: s.GetId()})
		if err != nil {
			return err
		}
		metas[i].store = s
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			metas[i].metas = append(metas[i].metas, m)
		}
	}, "read region metas"); err != nil {
		return nil, err
	}
	pl, err := makePlan(metas)
	if err != nil {
		return nil, err
	}
	say("%d stores, %d regions, %d stale regions tombstoned", len(stores), pl.regions, pl.tombstoned)
	log.Info("recovery plan", "stores", len(stores), "regions", pl.regions, "tombstoned", pl.tombstoned, "max_alloc_id", pl.maxAllocID)

	// 2. RecoverRegion, to every store (a store with nothing to lead gets
	// an empty stream: it learns the plan is made).
	if err := eachStore(stores, func(i int, s *metapb.Store) error {
		stream, err := client(i).RecoverRegion(ctx)
		if err != nil {
			return err
		}
		for _, c := range pl.commands[s.GetId()] {
			if err := stream.Send(c); err != nil {
				return err
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		if e := resp.GetError(); e != nil && e.GetMsg() != "" {
			return errors.New(e.GetMsg())
		}
		return nil
	}, "recover regions"); err != nil {
		return nil, err
	}

	// 3. WaitApply.
	if err := eachStore(stores, func(i int, s *metapb.Store) error {
		resp, err := client(i).WaitApply(ctx, &recoverpb.WaitApplyRequest{StoreId: s.GetId()})
		if err != nil {
			return err
		}
		if e := resp.GetError(); e != nil && e.GetMsg() != "" {
			return errors.New(e.GetMsg())
		}
		return nil
	}, "wait apply"); err != nil {
		return nil, err
	}
	say("every region has its leader and every peer has applied its log")

	// 4. ResolveKvData.
	var mu sync.Mutex
	var resolved uint64
	if err := eachStore(stores, func(i int, s *metapb.Store) error {
		stream, err := client(i).ResolveKvData(ctx, &recoverpb.ResolveKvDataRequest{ResolvedTs: o.ResolvedTS})
		if err != nil {
			return err
		}
		var last uint64
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if e := r.GetError(); e != nil && e.GetMsg() != "" {
				return errors.New(e.GetMsg())
			}
			last = r.GetResolvedKeyCount()
		}
		mu.Lock()
		resolved += last
		mu.Unlock()
		return nil
	}, "resolve kv data"); err != nil {
		return nil, err
	}
	say("deleted %d versions and locks after resolved ts %s", resolved, keyspace.Format(o.ResolvedTS))

	// 5. PD allocates ids above the restored ones (BR sets base-alloc-id
	// from its plan's max id; tikv/pd server/api/admin.go recoverAllocID
	// takes {"id": "<decimal>"}), then leaves recovery.
	if err := ph.call(ctx, http.MethodPost, "/pd/api/v1/admin/base-alloc-id", []byte(fmt.Sprintf(`{"id":"%d"}`, pl.maxAllocID+1)), nil); err != nil {
		log.Warn("set PD's base alloc id; PD keeps allocating from its own", "max_id", pl.maxAllocID, "error", err)
	}
	if o.Mark != nil {
		if err := o.Mark(ctx); err != nil {
			return nil, fmt.Errorf("%w: record the recovery in the target's etcd: %v", ErrUnavailable, err)
		}
	}
	if err := ph.call(ctx, http.MethodDelete, markerPath, nil, nil); err != nil {
		return nil, fmt.Errorf("the regions are recovered but PD's snapshot-recovery marker was not cleared (rerun, or DELETE %s): %w", markerPath, err)
	}
	say("PD left snapshot recovery")
	return &RecoverResult{Stores: len(stores), Regions: pl.regions, Tombstoned: pl.tombstoned, ResolvedKeys: resolved, Duration: time.Since(start)}, nil
}

// waitStores waits until PD lists n stores that are not tombstones.
func waitStores(ctx context.Context, pd PD, n int, wait time.Duration) ([]*metapb.Store, error) {
	deadline := time.Now().Add(wait)
	for {
		all, err := pd.GetAllStores(ctx)
		var up []*metapb.Store
		for _, s := range all {
			if s.GetState() != metapb.StoreState_Tombstone && s.GetAddress() != "" {
				up = append(up, s)
			}
		}
		if err == nil && len(up) >= n {
			sort.Slice(up, func(i, j int) bool { return up[i].GetId() < up[j].GetId() })
			return up, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("%w: list the stores: %v", ErrUnavailable, err)
			}
			return nil, fmt.Errorf("%w: PD lists %d stores after %s; the backup had %d: start every store on its restored volumes", ErrRecovery, len(up), wait, n)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// eachStore runs f on every store at once; the first failure names its
// store and the step.
func eachStore(stores []*metapb.Store, f func(i int, s *metapb.Store) error, step string) error {
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, s)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("%w: %s on store %d (%s): %v", ErrRecovery, step, stores[i].GetId(), stores[i].GetAddress(), err)
		}
	}
	return nil
}
