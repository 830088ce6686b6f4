package playground

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	recoverdatapb "github.com/pingcap/kvproto/pkg/recoverdatapb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/pd"
)

// hardlinkCopy snapshots a live directory as the local volume provider
// does: list it, hard-link every listed file in reverse name order
// (skipping one that vanished) and record its size; then make the volume
// from the snapshot in out, each file cut at its recorded size. (The
// engine's own test, mvcc TestLiveCopyIsACrashState, shows why the order.)
func hardlinkCopy(t *testing.T, dir, out string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	links := t.TempDir()
	sizes := map[string]int64{}
	for _, n := range names {
		err := os.Link(filepath.Join(dir, n), filepath.Join(links, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		fi, err := os.Stat(filepath.Join(links, n))
		require.NoError(t, err)
		sizes[n] = fi.Size()
	}
	require.NoError(t, os.MkdirAll(out, 0o755))
	for n, size := range sizes {
		src, err := os.Open(filepath.Join(links, n))
		require.NoError(t, err)
		dst, err := os.Create(filepath.Join(out, n))
		require.NoError(t, err)
		_, err = io.CopyN(dst, src, size)
		require.NoError(t, err)
		require.NoError(t, src.Close())
		require.NoError(t, dst.Close())
	}
}

func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	return dial(t, addr, insecure.NewCredentials())
}

func pdDo(t *testing.T, p *Playground, method, path string) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+p.PDAddr()+pd.APIPrefix+path, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

type storeMeta struct {
	store uint64
	metas []*recoverdatapb.RegionMeta
}

// brPlan picks leaders as BR does (br/pkg/restore/data/recover.go
// SortRecoverRegions, CheckConsistencyAndValidPeer, MakeRecoveryPlan):
// per region the peer with the greatest (last_log_term, last_index,
// commit_index) stands for it; regions are taken by version, highest
// first, and one overlapping a region already taken is dropped (its peers
// are tombstoned). It returns, per store, the RecoverRegion requests.
func brPlan(t *testing.T, all []storeMeta) map[uint64][]*recoverdatapb.RecoverRegionRequest {
	type peer struct {
		store uint64
		m     *recoverdatapb.RegionMeta
	}
	byRegion := map[uint64][]peer{}
	for _, s := range all {
		for _, m := range s.metas {
			byRegion[m.RegionId] = append(byRegion[m.RegionId], peer{s.store, m})
		}
	}
	type info struct {
		id   uint64
		best peer
	}
	var infos []info
	for id, ps := range byRegion {
		sort.Slice(ps, func(i, j int) bool {
			a, b := ps[i].m, ps[j].m
			if a.LastLogTerm != b.LastLogTerm {
				return a.LastLogTerm > b.LastLogTerm
			}
			if a.LastIndex != b.LastIndex {
				return a.LastIndex > b.LastIndex
			}
			return a.CommitIndex > b.CommitIndex
		})
		infos = append(infos, info{id, ps[0]})
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].best.m.Version > infos[j].best.m.Version })
	var taken []info
	for _, in := range infos {
		ok := true
		for _, o := range taken {
			if rangesOverlap(in.best.m.StartKey, in.best.m.EndKey, o.best.m.StartKey, o.best.m.EndKey) {
				ok = false
				break
			}
		}
		if ok {
			taken = append(taken, in)
		}
	}
	plan := map[uint64][]*recoverdatapb.RecoverRegionRequest{}
	valid := map[uint64]bool{}
	for _, in := range taken {
		valid[in.id] = true
		plan[in.best.store] = append(plan[in.best.store], &recoverdatapb.RecoverRegionRequest{RegionId: in.id, AsLeader: true})
	}
	for id, ps := range byRegion {
		if !valid[id] {
			for _, p := range ps {
				plan[p.store] = append(plan[p.store], &recoverdatapb.RecoverRegionRequest{RegionId: id, Tombstone: true})
			}
		}
	}
	require.NotEmpty(t, taken)
	return plan
}

// TestVolumeRecovery: volume snapshots of a running cluster, taken store
// by store while writes, splits and a held lock go on, restored on a
// second playground through the recovery protocol as BR drives it, give
// the source's data at the backup ts and nothing after.
func TestVolumeRecovery(t *testing.T) {
	ctx := context.Background()
	srcDir := t.TempDir()
	src, err := Start(ctx, Config{Dir: srcDir, Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, src.Close()) }()
	src.Engine.SetCheckpointBytes(4 << 10) // checkpoints during the copies

	cli := newClient(t, ctx, src.PDAddr())
	defer cli.Close()
	var keys []string
	for i := 0; i < 60; i++ {
		k := fmt.Sprintf("k%03d", i)
		keys = append(keys, k)
		put(t, ctx, cli, k, "v1-"+k)
	}
	for _, k := range []string{"k020", "k040"} {
		_, err := src.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	// A lock held across the backup ts, never committed.
	lockTS, err := src.TS(ctx)
	require.NoError(t, err)
	_, err = src.Engine.Prewrite(mvcc.PrewriteArgs{StartTS: lockTS, Primary: []byte("k005"), LockTTL: 600_000,
		Mutations: []mvcc.Mutation{{Op: mvcc.OpPut, Key: []byte("k005"), Value: []byte("locked")}}})
	require.NoError(t, err)
	for i := 0; i < 60; i += 3 {
		put(t, ctx, cli, keys[i], "v2-"+keys[i])
	}
	backupTS, err := src.TS(ctx)
	require.NoError(t, err)
	want := map[string]string{}
	snap := src.Engine.Snapshot()
	for _, k := range keys {
		v, ok, err := snap.Get([]byte(k), backupTS)
		require.NoError(t, err)
		require.True(t, ok)
		want[k] = string(v)
	}
	snap.Release()

	// Writes after the backup ts go on while the stores are copied, one at
	// a time, each at its own moment; a split lands between two copies.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			txn, err := cli.Begin()
			if err != nil {
				t.Error(err)
				return
			}
			if k := keys[n%len(keys)]; k != "k005" { // the held lock would stall it
				_ = txn.Set([]byte(k), []byte("v3-"+strconv.Itoa(n)))
			}
			_ = txn.Set([]byte(fmt.Sprintf("new%05d", n)), []byte("after"))
			if err := txn.Commit(ctx); err != nil {
				t.Logf("commit after backup ts: %v", err)
			}
		}
	}()
	snapDir := t.TempDir()
	vf, err := src.Volumes()
	require.NoError(t, err)
	for i := range vf.TiKV.Stores {
		s := &vf.TiKV.Stores[i]
		for j := range s.Volumes {
			v := &s.Volumes[j]
			v.RestoreID = filepath.Join(snapDir, strconv.FormatUint(s.StoreID, 10), filepath.Base(v.ID))
			if v.Type == VolumeTypeRaft {
				v.RestoreID += "-raft"
			}
			hardlinkCopy(t, v.ID, v.RestoreID)
		}
		if i == 0 {
			_, err := src.Cluster.Split([]byte("k050"))
			require.NoError(t, err)
		}
		time.Sleep(20 * time.Millisecond) // let writes land between copies
	}
	close(stop)
	wg.Wait()
	restoreFile := filepath.Join(snapDir, "restore-volumes.json")
	writeJSONFile(t, restoreFile, vf)

	// The restored cluster: PD first, the stores held back.
	dst, err := Start(ctx, Config{Dir: t.TempDir(), Stores: 3, DeferStores: true, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, dst.Close()) }()
	require.Empty(t, dst.StoreAddrs())
	err = dst.StartStoresFromVolumes(ctx, restoreFile)
	require.ErrorIs(t, err, ErrNotRecovering, "without the marker the stores refuse to start")
	code, body := ctlDo(t, dst, "POST", "/start-stores", map[string]string{"volumes_file": restoreFile})
	require.Equal(t, http.StatusConflict, code, string(body))
	require.Equal(t, http.StatusOK, pdDo(t, dst, http.MethodPost, "admin/cluster/markers/snapshot-recovering"))
	code, body = ctlDo(t, dst, "POST", "/start-stores", map[string]string{"volumes_file": restoreFile})
	require.Equal(t, http.StatusOK, code, string(body))
	require.True(t, dst.Recovering())

	addrs := dst.StoreAddrs()
	require.Len(t, addrs, 3)
	var all []storeMeta
	for id, addr := range addrs {
		stream, err := recoverdatapb.NewRecoverDataClient(dialPlain(t, addr)).ReadRegionMeta(ctx, &recoverdatapb.ReadRegionMetaRequest{StoreId: id})
		require.NoError(t, err)
		sm := storeMeta{store: id}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			require.False(t, m.Tombstone)
			require.EqualValues(t, lastLogTerm, m.LastLogTerm)
			require.NotZero(t, m.LastIndex)
			require.Equal(t, m.LastIndex, m.CommitIndex)
			sm.metas = append(sm.metas, m)
		}
		require.NotEmpty(t, sm.metas)
		all = append(all, sm)
	}

	// Before the cluster is recovered, KV requests are refused as by
	// peers without a leader.
	m0 := all[0].metas[0]
	resp, err := tikvpb.NewTikvClient(dialPlain(t, addrs[all[0].store])).KvGet(ctx, &kvrpcpb.GetRequest{
		Context: &kvrpcpb.Context{RegionId: m0.RegionId}, Key: []byte("k001"), Version: backupTS})
	require.NoError(t, err)
	require.NotNil(t, resp.GetRegionError().GetNotLeader(), "%v", resp.GetRegionError())
	require.Nil(t, resp.GetRegionError().GetNotLeader().GetLeader())

	plan := brPlan(t, all)
	for id, addr := range addrs {
		stream, err := recoverdatapb.NewRecoverDataClient(dialPlain(t, addr)).RecoverRegion(ctx)
		require.NoError(t, err)
		for _, req := range plan[id] {
			require.NoError(t, stream.Send(req))
		}
		out, err := stream.CloseAndRecv()
		require.NoError(t, err)
		require.Equal(t, id, out.StoreId)
	}
	for _, addr := range addrs {
		out, err := recoverdatapb.NewRecoverDataClient(dialPlain(t, addr)).WaitApply(ctx, &recoverdatapb.WaitApplyRequest{})
		require.NoError(t, err)
		require.Nil(t, out.GetError())
	}
	resolved := uint64(0)
	for id, addr := range addrs {
		stream, err := recoverdatapb.NewRecoverDataClient(dialPlain(t, addr)).ResolveKvData(ctx, &recoverdatapb.ResolveKvDataRequest{ResolvedTs: backupTS})
		require.NoError(t, err)
		n := 0
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			require.Equal(t, id, r.StoreId)
			if r.CurrentCommitTs != 0 {
				require.Greater(t, r.CurrentCommitTs, backupTS)
			}
			resolved += r.ResolvedKeyCount
			n++
		}
		require.NotZero(t, n, "at least one response per store")
	}
	require.NotZero(t, resolved, "versions after the backup ts were deleted")

	// Still recovering: client requests are refused.
	resp, err = tikvpb.NewTikvClient(dialPlain(t, addrs[1])).KvGet(ctx, &kvrpcpb.GetRequest{
		Context: &kvrpcpb.Context{RegionId: dst.Cluster.LocateRaw([]byte("k001")).ID}, Key: []byte("k001"), Version: backupTS})
	require.NoError(t, err)
	require.NotNil(t, resp.GetRegionError().GetNotLeader(), "still in recovery mode: %v", resp.GetRegionError())

	require.Equal(t, http.StatusOK, pdDo(t, dst, http.MethodDelete, "admin/cluster/markers/snapshot-recovering"))
	require.Eventually(t, func() bool { return !dst.Recovering() }, 10*time.Second, 10*time.Millisecond)
	_, err = recoverdatapb.NewRecoverDataClient(dialPlain(t, addrs[1])).WaitApply(ctx, &recoverdatapb.WaitApplyRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err), "no recovery service outside recovery mode")

	// The restored cluster is the source at the backup ts.
	dcli := newClient(t, ctx, dst.PDAddr())
	defer dcli.Close()
	it, err := dcli.GetSnapshot(backupTS).Iter(nil, nil)
	require.NoError(t, err)
	got := map[string]string{}
	for it.Valid() {
		got[string(it.Key())] = string(it.Value())
		require.NoError(t, it.Next())
	}
	it.Close()
	require.Equal(t, want, got, "a snapshot read at the backup ts equals the source's")
	left := 0
	require.NoError(t, dst.Engine.Snapshot().DeltaScan(nil, nil, backupTS, func(e mvcc.DeltaEntry) error {
		left++
		return nil
	}))
	require.Zero(t, left, "no lock and no version after the backup ts remains")
	require.Zero(t, dst.Engine.Stats().Locks)
	// It serves as usual: a new transaction commits and reads back.
	put(t, ctx, dcli, "after-restore", "ok")
	require.Equal(t, "ok", get(t, ctx, dcli, "after-restore"))
	require.Equal(t, "v2-k000", get(t, ctx, dcli, "k000"))
	for _, r := range dst.Cluster.Regions() {
		require.NotZero(t, r.Leader, "region %d has its elected leader", r.ID)
	}
}

func writeJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := jsonMarshalIndent(v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o644))
}
