package tikv_test

import (
	"context"
	"testing"

	"github.com/pingcap/kvproto/pkg/coprocessor"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/tikv"
	"github.com/pitr-io/pitr/proto/tipb"
)

// commit writes kvs in one transaction started at startTS and committed at
// startTS+1, straight into the engine.
func commit(t *testing.T, eng *mvcc.Engine, startTS uint64, kvs ...string) {
	t.Helper()
	var ms []mvcc.Mutation
	var keys [][]byte
	for i := 0; i < len(kvs); i += 2 {
		ms = append(ms, mvcc.Mutation{Op: mvcc.OpPut, Key: []byte(kvs[i]), Value: []byte(kvs[i+1])})
		keys = append(keys, []byte(kvs[i]))
	}
	_, err := eng.Prewrite(mvcc.PrewriteArgs{Mutations: ms, Primary: keys[0], StartTS: startTS, LockTTL: 3000})
	require.NoError(t, err)
	require.NoError(t, eng.Commit(keys, startTS, startTS+1))
}

func regionCtx(r *cluster.Region) *kvrpcpb.Context {
	ep := r.Epoch
	return &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.LeaderPeer()}
}

func checksumReq(t *testing.T, r *cluster.Region, ts uint64, ranges ...string) *coprocessor.Request {
	t.Helper()
	data, err := proto.Marshal(&tipb.ChecksumRequest{ScanOn: tipb.ChecksumScanOn_Table.Enum(), Algorithm: tipb.ChecksumAlgorithm_Crc64_Xor.Enum()})
	require.NoError(t, err)
	req := &coprocessor.Request{Context: regionCtx(r), Tp: tikv.ReqTypeChecksum, Data: data, StartTs: ts}
	for i := 0; i < len(ranges); i += 2 {
		req.Ranges = append(req.Ranges, &coprocessor.KeyRange{Start: []byte(ranges[i]), End: []byte(ranges[i+1])})
	}
	return req
}

func decodeSum(t *testing.T, resp *coprocessor.Response) checksum.Sum {
	t.Helper()
	require.Empty(t, resp.OtherError)
	require.Nil(t, resp.RegionError)
	require.Nil(t, resp.Locked)
	var cr tipb.ChecksumResponse
	require.NoError(t, proto.Unmarshal(resp.Data, &cr))
	return checksum.Sum{Crc64Xor: cr.GetChecksum(), TotalKvs: cr.GetTotalKvs(), TotalBytes: cr.GetTotalBytes()}
}

func sumOf(kvs ...string) checksum.Sum {
	var s checksum.Sum
	for i := 0; i < len(kvs); i += 2 {
		s.Add([]byte(kvs[i]), []byte(kvs[i+1]))
	}
	return s
}

// TestCoprocessorChecksum serves checksum requests (tp 105) the way TiKV's
// coprocessor endpoint does, against a store's handler directly.
func TestCoprocessorChecksum(t *testing.T) {
	h := startHarness(t)
	eng := h.engine
	commit(t, eng, 10, "a", "1", "b", "22", "c", "333", "m", "mm", "x", "xxx")
	commit(t, eng, 20, "b", "new") // after ts 15: invisible there
	_, err := h.cluster.Split([]byte("m"))
	require.NoError(t, err)
	left, right := h.cluster.LocateRaw([]byte("a")), h.cluster.LocateRaw([]byte("m"))
	require.NotEqual(t, left.ID, right.ID)
	cop := func(r *cluster.Region, req *coprocessor.Request) *coprocessor.Response {
		t.Helper()
		resp, err := h.stores[r.Leader].Coprocessor(context.Background(), req)
		require.NoError(t, err)
		return resp
	}

	t.Run("sum of the visible keys", func(t *testing.T) {
		require.Equal(t, sumOf("a", "1", "b", "22", "c", "333"), decodeSum(t, cop(left, checksumReq(t, left, 15, "", "m"))))
		require.Equal(t, sumOf("a", "1", "b", "new", "c", "333"), decodeSum(t, cop(left, checksumReq(t, left, 25, "", "m"))))
		// Several ranges in one request.
		require.Equal(t, sumOf("a", "1", "c", "333"), decodeSum(t, cop(left, checksumReq(t, left, 15, "a", "b", "c", "d"))))
	})
	t.Run("start_ts fallback", func(t *testing.T) {
		req := checksumReq(t, left, 0, "", "m")
		data, err := proto.Marshal(&tipb.ChecksumRequest{StartTsFallback: proto.Uint64(15)})
		require.NoError(t, err)
		req.Data = data
		require.Equal(t, sumOf("a", "1", "b", "22", "c", "333"), decodeSum(t, cop(left, req)))
	})
	t.Run("empty end key scans nothing", func(t *testing.T) {
		require.Equal(t, checksum.Sum{}, decodeSum(t, cop(right, checksumReq(t, right, 15, "m", ""))))
	})
	t.Run("range crossing the region end is clipped", func(t *testing.T) {
		require.Equal(t, sumOf("b", "22", "c", "333"), decodeSum(t, cop(left, checksumReq(t, left, 15, "b", "z"))))
	})
	t.Run("start outside the region", func(t *testing.T) {
		resp := cop(right, checksumReq(t, right, 15, "a", "z"))
		require.NotNil(t, resp.RegionError.GetKeyNotInRegion(), "%v", resp.RegionError)
	})
	t.Run("rewrite rule", func(t *testing.T) {
		req := checksumReq(t, right, 15, "m", "n")
		data, err := proto.Marshal(&tipb.ChecksumRequest{Rule: &tipb.ChecksumRewriteRule{OldPrefix: []byte("old"), NewPrefix: []byte("m")}})
		require.NoError(t, err)
		req.Data = data
		require.Equal(t, sumOf("old", "mm"), decodeSum(t, cop(right, req)))
		req.Ranges[0].End = []byte("zz") // x does not start with m
		require.Contains(t, cop(right, req).OtherError, "wrong prefix")
	})
	t.Run("unsupported tp", func(t *testing.T) {
		req := checksumReq(t, left, 15, "", "m")
		req.Tp = 103 // DAG
		require.Equal(t, "unsupported tp 103", cop(left, req).OtherError)
	})
	t.Run("unknown algorithm", func(t *testing.T) {
		req := checksumReq(t, left, 15, "", "m")
		req.Data = []byte{3<<3 | 0, 7} // algorithm = 7
		require.Contains(t, cop(left, req).OtherError, "unknown checksum algorithm")
	})
	t.Run("stale epoch", func(t *testing.T) {
		stale := left.Clone()
		stale.Epoch.Version--
		resp := cop(left, checksumReq(t, stale, 15, "", "m"))
		require.NotNil(t, resp.RegionError.GetEpochNotMatch(), "%v", resp.RegionError)
	})
	t.Run("not leader", func(t *testing.T) {
		var follower uint64
		for _, p := range left.Peers {
			if p.StoreId != left.Leader {
				follower = p.StoreId
			}
		}
		req := checksumReq(t, left, 15, "", "m")
		req.Context.Peer = left.PeerOn(follower)
		resp, err := h.stores[follower].Coprocessor(context.Background(), req)
		require.NoError(t, err)
		require.NotNil(t, resp.RegionError.GetNotLeader(), "%v", resp.RegionError)
	})
	t.Run("lock below start_ts", func(t *testing.T) {
		_, err := eng.Prewrite(mvcc.PrewriteArgs{
			Mutations: []mvcc.Mutation{{Op: mvcc.OpPut, Key: []byte("c"), Value: []byte("locked")}},
			Primary:   []byte("c"), StartTS: 30, LockTTL: 3000,
		})
		require.NoError(t, err)
		resp := cop(left, checksumReq(t, left, 40, "", "m"))
		require.NotNil(t, resp.Locked, "%v", resp)
		require.Equal(t, uint64(30), resp.Locked.LockVersion)
		require.Equal(t, []byte("c"), resp.Locked.Key)
		require.Empty(t, resp.Data)
		// Below the lock's start_ts the lock is not in the way.
		require.Equal(t, sumOf("a", "1", "b", "new", "c", "333"), decodeSum(t, cop(left, checksumReq(t, left, 25, "", "m"))))
		// Nor outside the ranges.
		require.Equal(t, sumOf("a", "1"), decodeSum(t, cop(left, checksumReq(t, left, 40, "", "b"))))
		// A resolved lock (Context.resolved_locks) is bypassed.
		req := checksumReq(t, left, 40, "", "m")
		req.Context.ResolvedLocks = []uint64{30}
		require.Equal(t, sumOf("a", "1", "b", "new", "c", "333"), decodeSum(t, cop(left, req)))
		require.NoError(t, eng.BatchRollback([][]byte{[]byte("c")}, 30))
	})
	t.Run("stopped store", func(t *testing.T) {
		s := h.stores[left.Leader]
		s.Stop()
		resp, err := s.Coprocessor(context.Background(), checksumReq(t, left, 15, "", "m"))
		require.NoError(t, err)
		require.NotNil(t, resp.RegionError)
	})
}
