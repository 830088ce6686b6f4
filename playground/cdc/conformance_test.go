package cdc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/cluster"
)

func encodeKey(k string) []byte { return cluster.EncodeKey([]byte(k)) }

// The CDC conformance suite: every rule of TIKV-PROTOCOLS.md §1 checked from
// the client side over real gRPC. Every received message also goes through
// feed.check (batching limits, nothing after an error, no resolved ts
// before INITIALIZED, no commit at or below a received resolved ts).

func val(n int, tag string) []byte {
	b := bytes.Repeat([]byte{'.'}, n)
	copy(b, tag)
	return b
}

type wantRow struct {
	typ      cdcpb.Event_LogType
	op       cdcpb.Event_Row_OpType
	key      string
	start    uint64
	commit   uint64
	value    []byte
	oldValue []byte
}

func requireRows(t *testing.T, want []wantRow, got []*cdcpb.Event_Row) {
	t.Helper()
	var ws, gs []string
	for _, w := range want {
		ws = append(ws, fmt.Sprintf("%s %s %q start=%d commit=%d v=%q old=%q", w.typ, w.op, w.key, w.start, w.commit, short(w.value), short(w.oldValue)))
	}
	for _, g := range got {
		gs = append(gs, fmt.Sprintf("%s %s %q start=%d commit=%d v=%q old=%q", g.Type, g.OpType, g.Key, g.StartTs, g.CommitTs, short(g.Value), short(g.OldValue)))
	}
	require.Equal(t, strings.Join(ws, "\n"), strings.Join(gs, "\n"))
}

// short identifies a value by its tag and length.
func short(v []byte) string {
	if len(v) <= 16 {
		return string(v)
	}
	return fmt.Sprintf("%s…(%d)", bytes.TrimRight(v[:16], "."), len(v))
}

func TestScanOrderAndCheckpoint(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	big := val(300, "a-big")
	big2 := val(1000, "e-big")

	h.txn(put("a", []byte("a1")), put("b", []byte("b1")))
	beforeCP := h.ts()
	cp := h.ts()
	s2, c2 := h.txn(put("a", []byte("a2")))
	s3, c3 := h.txn(put("a", big), del("b"))
	s4 := h.ts()
	h.prewrite(s4, []mut{put("c", []byte("c4"))}, pwOpts{})
	h.rollback(s4, "c")
	h.txn(lockOnly("d"))
	s6 := h.ts()
	h.prewrite(s6, []mut{put("b", []byte("b6")), put("e", big2)}, pwOpts{})
	// A lock older than the checkpoint is still sent.
	h.prewrite(beforeCP, []mut{put("f", []byte("f0"))}, pwOpts{})

	f := h.feed("a", feedOpts{})
	r := h.region("a")
	f.register(r, 1, cp)
	f.register(r, 2, c2) // commit_ts == checkpoint is excluded
	f.until(func() bool { return f.initialized[subID{1, r.ID}] && f.initialized[subID{2, r.ID}] })

	tail := []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "b", s6, 0, []byte("b6"), nil},
		{cdcpb.Event_COMMITTED, cdcpb.Event_Row_DELETE, "b", s3, c3, nil, []byte("b1")},
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "e", s6, 0, big2, nil},
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "f", beforeCP, 0, []byte("f0"), nil},
		{typ: cdcpb.Event_INITIALIZED},
	}
	want1 := append([]wantRow{
		{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "a", s3, c3, big, []byte("a2")},
		{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "a", s2, c2, []byte("a2"), []byte("a1")},
	}, tail...)
	want2 := append([]wantRow{
		{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "a", s3, c3, big, []byte("a2")},
	}, tail...)
	requireRows(t, want1, f.logs[subID{1, r.ID}].rows)
	requireRows(t, want2, f.logs[subID{2, r.ID}].rows)
}

func TestScanSpanIsRegionAndRequestIntersection(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		h.txn(put(k, []byte(k)))
	}
	_, err := h.cl.Split([]byte("b"))
	require.NoError(t, err)
	r := h.region("c") // [b, +inf)
	f := h.feed("c", feedOpts{})
	req := f.registerReq(r, 1, 0)
	req.StartKey = encodeKey("a") // clipped to the region: b
	req.EndKey = encodeKey("d")
	f.sendReq(req)
	rows := f.initializedRows(subID{1, r.ID})
	var keys []string
	for _, row := range rows {
		keys = append(keys, string(row.Key))
	}
	require.Equal(t, []string{"b", "c"}, keys)

	// Live rows outside the span are not sent either.
	h.txn(put("d", []byte("d2")))
	s, c := h.txn(put("c", []byte("c2")))
	got := f.nextRows(subID{1, r.ID}, 2)
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "c", s, 0, []byte("c2"), []byte("c")},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "c", s, c, []byte("c2"), nil},
	}, got)
}

func TestLiveRowShapes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	f := h.feed("x", feedOpts{})
	r := h.region("x")
	all, loop := subID{1, r.ID}, subID{2, r.ID}
	f.register(r, all.req, h.ts())
	req := f.registerReq(r, loop.req, h.ts())
	req.FilterLoop = true
	f.sendReq(req)
	f.until(func() bool { return f.initialized[all] && f.initialized[loop] })
	f.take(all)
	f.take(loop)

	big := val(256, "big") // one byte over the short-value limit
	var want []wantRow

	// 2PC with a short value: PREWRITE with value, COMMIT with value.
	s1, c1 := h.txn(put("x", []byte("x1")))
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "x", s1, 0, []byte("x1"), nil},
		wantRow{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "x", s1, c1, []byte("x1"), nil})
	// 2PC with a value over 255 B: COMMIT carries no value.
	s2, c2 := h.txn(put("y", big))
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "y", s2, 0, big, nil},
		wantRow{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "y", s2, c2, nil, nil})
	// Exactly 255 B is a short value.
	v255 := val(255, "v255")
	s3, c3 := h.txn(put("y", v255))
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "y", s3, 0, v255, big},
		wantRow{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "y", s3, c3, v255, nil})
	// Delete: old value in the PREWRITE.
	s4, c4 := h.txn(del("x"))
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_DELETE, "x", s4, 0, nil, []byte("x1")},
		wantRow{cdcpb.Event_COMMIT, cdcpb.Event_Row_DELETE, "x", s4, c4, nil, nil})
	// Rollback: ROLLBACK row, op UNKNOWN, commit_ts 0.
	s5 := h.ts()
	h.prewrite(s5, []mut{put("z", []byte("z5"))}, pwOpts{})
	h.rollback(s5, "z")
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "z", s5, 0, []byte("z5"), nil},
		wantRow{cdcpb.Event_ROLLBACK, cdcpb.Event_Row_UNKNOWN, "z", s5, 0, nil, nil})
	// Lock-only mutations make no row at all.
	h.txn(lockOnly("x"))
	// 1PC: COMMITTED rows with value and old value, short and long.
	s6 := h.ts()
	c6 := h.prewrite(s6, []mut{put("w", []byte("w6")), put("y", big)}, pwOpts{onePC: true})
	require.NotZero(t, c6)
	want = append(want,
		wantRow{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "w", s6, c6, []byte("w6"), nil},
		wantRow{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "y", s6, c6, big, v255})
	// Heartbeat rewriting a lock with a short value re-sends the PREWRITE;
	// one whose value is in the default CF sends nothing.
	s7 := h.ts()
	h.prewrite(s7, []mut{put("p", []byte("p7"))}, pwOpts{})
	h.heartbeat(s7, "p")
	s8 := h.ts()
	h.prewrite(s8, []mut{put("q", big)}, pwOpts{})
	h.heartbeat(s8, "q")
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "p", s7, 0, []byte("p7"), nil},
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "p", s7, 0, []byte("p7"), nil},
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "q", s8, 0, big, nil})
	h.rollback(s7, "p")
	h.rollback(s8, "q")
	want = append(want,
		wantRow{cdcpb.Event_ROLLBACK, cdcpb.Event_Row_UNKNOWN, "p", s7, 0, nil, nil},
		wantRow{cdcpb.Event_ROLLBACK, cdcpb.Event_Row_UNKNOWN, "q", s8, 0, nil, nil})
	wantLoop := append([]wantRow(nil), want...)

	// txn_source: Lightning physical import and lossy DDL reorg rows are
	// always dropped; CDC-written rows only with filter_loop.
	for _, src := range []uint64{1 << 16, 1 << 8} {
		s := h.ts()
		h.prewrite(s, []mut{put("s", []byte("s"))}, pwOpts{txnSource: src})
		h.commit(s, h.ts(), "s")
	}
	s9 := h.ts()
	h.prewrite(s9, []mut{put("t", []byte("t9"))}, pwOpts{txnSource: 1})
	c9 := h.ts()
	h.commit(s9, c9, "t")
	want = append(want,
		wantRow{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "t", s9, 0, []byte("t9"), nil},
		wantRow{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "t", s9, c9, []byte("t9"), nil})
	// A final marker: everything before it has been sent.
	sm, cm := h.txn(put("zz-marker", []byte("m")))
	marker := []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "zz-marker", sm, 0, []byte("m"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "zz-marker", sm, cm, []byte("m"), nil},
	}
	want = append(want, marker...)
	wantLoop = append(wantLoop, marker...)

	done := func(k subID) bool {
		l := f.logs[k]
		return l != nil && len(l.rows) > 0 && string(l.rows[len(l.rows)-1].Key) == "zz-marker" && l.rows[len(l.rows)-1].Type == cdcpb.Event_COMMIT
	}
	f.until(func() bool { return done(all) && done(loop) })
	requireRows(t, want, f.logs[all].rows)
	requireRows(t, wantLoop, f.logs[loop].rows)
	for _, row := range f.logs[all].rows {
		if string(row.Key) == "t" {
			require.EqualValues(t, 1, row.TxnSource)
		}
	}
}

func TestLiveRowsInterleaveWithScan(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	loadBig(h, "k", 16<<10, 1024)
	r := h.region("k")
	f := h.feed("k", feedOpts{smallWindow: true})
	k := subID{1, r.ID}
	f.register(r, k.req, 0)
	f.until(func() bool { return f.logs[k] != nil && len(f.logs[k].rows) > 0 })
	// The scan is 16 MiB, far beyond what the stream buffers, so it cannot
	// have finished while the consumer stops reading.
	f.pause()
	s, c := h.txn(put("live", []byte("v")))
	f.resume()
	f.until(func() bool { return f.initialized[k] })
	rows := f.logs[k].rows
	last := -1 // index of the live COMMIT
	var scanKeys [][]byte
	for i, row := range rows {
		if string(row.Key) == "live" {
			last = i
		} else if row.Type == cdcpb.Event_COMMITTED {
			scanKeys = append(scanKeys, row.Key)
		}
	}
	require.Greater(t, last, 0)
	require.Equal(t, cdcpb.Event_COMMITTED, rows[last+1].Type, "scan rows must follow the live rows")
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "live", s, 0, []byte("v"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "live", s, c, []byte("v"), nil},
	}, liveOnly(rows, "live"))
	require.Len(t, scanKeys, 16<<10)
	require.Greater(t, f.maxEvents, 1, "scan events are batched into messages")
	for i := 1; i < len(scanKeys); i++ {
		require.Negative(t, bytes.Compare(scanKeys[i-1], scanKeys[i]), "scan out of key order")
	}
}

// loadBig commits n keys prefix/%06d with values of size bytes.
func loadBig(h *harness, prefix string, n, size int) {
	const batch = 512
	for i := 0; i < n; i += batch {
		var muts []mut
		for j := i; j < i+batch && j < n; j++ {
			muts = append(muts, put(fmt.Sprintf("%s/%06d", prefix, j), val(size, fmt.Sprint(j))))
		}
		h.txn(muts...)
	}
}

func TestResolvedTs(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	_, err := h.cl.Split([]byte("m"))
	require.NoError(t, err)
	ra, rb := h.region("a"), h.region("x")
	// A lock taken before the subscription: the scan seeds the tracker.
	lockTS := h.ts()
	h.prewrite(lockTS, []mut{put("a", []byte("a"))}, pwOpts{})
	before := h.ts()

	f := h.feed("a", feedOpts{})
	f.register(ra, 1, before)
	f.register(rb, 2, before)
	// Both regions in one store-level batch with request_id 0; its ts is
	// the batch minimum, held at the lock's start ts and re-sent every
	// round while it does not move.
	for seen := 0; seen < 3; {
		rts := f.next().ResolvedTs
		if rts == nil {
			continue
		}
		require.Zero(t, rts.RequestId)
		if seen == 0 && len(rts.Regions) < 2 {
			continue // a round ran while only one region was initialized
		}
		require.ElementsMatch(t, []uint64{ra.ID, rb.ID}, rts.Regions)
		require.Equal(t, lockTS, rts.Ts)
		seen++
	}
	// Alone, the unlocked region resolves to a TSO: past the lock.
	g := h.feed("x", feedOpts{})
	g.register(rb, 1, before)
	for {
		if rts := g.next().ResolvedTs; rts != nil {
			require.Equal(t, []uint64{rb.ID}, rts.Regions)
			require.Greater(t, rts.Ts, before)
			require.Less(t, rts.Ts, h.ts())
			break
		}
	}
	commitTS := h.ts()
	h.commit(lockTS, commitTS, "a")
	for {
		if rts := f.next().ResolvedTs; rts != nil && rts.Ts > commitTS {
			break
		}
	}

	// A live lock is tracked too: while it is held no resolved ts reaches
	// a commit ts taken after it, so its COMMIT is above every resolved ts
	// (feed.check verifies that).
	s := h.ts()
	h.prewrite(s, []mut{put("b", []byte("b"))}, pwOpts{})
	c := h.ts()
	for seen := 0; seen < 3; {
		if rts := f.next().ResolvedTs; rts != nil {
			require.Less(t, rts.Ts, c)
			seen++
		}
	}
	h.commit(s, c, "b")
	for {
		if rts := f.next().ResolvedTs; rts != nil && rts.Ts > c {
			break
		}
	}
}

func TestResolvedTsMonotonicSingleRegion(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.region("a")
	f := h.feed("a", feedOpts{})
	f.register(r, 7, h.ts())
	var last uint64
	for n := 0; n < 10; {
		ev := f.next()
		if rts := ev.ResolvedTs; rts != nil {
			require.Equal(t, []uint64{r.ID}, rts.Regions)
			require.GreaterOrEqual(t, rts.Ts, last)
			last = rts.Ts
			n++
			if n%3 == 0 {
				h.txn(put("a", []byte(fmt.Sprint(n))))
			}
		}
	}
}

func TestResolvedTsOldClientPerRegion(t *testing.T) {
	for _, version := range []string{"", "4.0.7", "v4.0.8" /* not semver: 0.0.0 */} {
		t.Run("version="+version, func(t *testing.T) {
			h := newHarness(t, harnessOpts{stores: 1})
			r := h.region("a")
			f := openFeed(t, h.leaderAddr("a"), feedOpts{version: version, clusterID: 999 /* not checked */})
			k := subID{5, r.ID}
			f.register(r, k.req, h.ts())
			f.until(func() bool { return f.logs[k] != nil && len(f.logs[k].resolved) >= 2 })
			require.NotNil(t, f.logs[k])
			require.Nil(t, f.logs[k].err)
			// No store-level ResolvedTs ever came (check would have recorded
			// it under request_id 0).
			require.Nil(t, f.logs[subID{0, r.ID}])
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.region("a")
	leader := h.addrs[r.Leader]
	follower := h.follower(r)

	t.Run("NotLeader", func(t *testing.T) {
		f := openFeed(t, h.addrs[follower], feedOpts{version: "8.5.0", clusterID: testClusterID})
		f.register(r, 1, 0)
		e, rows := f.errorOf(subID{1, r.ID})
		require.Empty(t, rows)
		require.NotNil(t, e.NotLeader, "%v", e)
		require.Equal(t, r.ID, e.NotLeader.RegionId)
		require.Equal(t, r.Leader, e.NotLeader.Leader.GetStoreId())
	})
	t.Run("RegionNotFound", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "8.5.0", clusterID: testClusterID})
		bogus := r.Clone()
		bogus.ID = 999999
		f.register(bogus, 1, 0)
		e, _ := f.errorOf(subID{1, bogus.ID})
		require.NotNil(t, e.RegionNotFound, "%v", e)
		require.Equal(t, bogus.ID, e.RegionNotFound.RegionId)
	})
	t.Run("EpochNotMatch", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "8.5.0", clusterID: testClusterID})
		stale := r.Clone()
		stale.Epoch.Version--
		f.register(stale, 1, 0)
		e, _ := f.errorOf(subID{1, r.ID})
		require.NotNil(t, e.EpochNotMatch, "%v", e)
		require.Len(t, e.EpochNotMatch.CurrentRegions, 1)
		require.Equal(t, r.Epoch.Version, e.EpochNotMatch.CurrentRegions[0].RegionEpoch.Version)
		// conf_ver is not checked.
		other := r.Clone()
		other.Epoch.ConfVer += 7
		f.register(other, 2, 0)
		f.initializedRows(subID{2, r.ID})
	})
	t.Run("DuplicateRequest", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "8.5.0", clusterID: testClusterID})
		f.register(r, 1, 0)
		f.initializedRows(subID{1, r.ID})
		require.NoError(t, f.send(f.registerReq(r, 1, 0)))
		e, _ := f.errorOf(subID{1, r.ID})
		require.NotNil(t, e.DuplicateRequest, "%v", e)
		require.Equal(t, r.ID, e.DuplicateRequest.RegionId)
		// The same region under another request_id is a new subscription.
		f.register(r, 2, 0)
		f.initializedRows(subID{2, r.ID})
	})
	t.Run("ClusterIDMismatch", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "5.3.0", clusterID: 1})
		f.register(r, 1, 0)
		e, _ := f.errorOf(subID{1, r.ID})
		require.NotNil(t, e.ClusterIdMismatch, "%v", e)
		require.EqualValues(t, testClusterID, e.ClusterIdMismatch.Current)
		require.EqualValues(t, 1, e.ClusterIdMismatch.Request)
		// Below 5.3.0 (pre-releases included) the id is not checked.
		for i, v := range []string{"5.2.9", "5.3.0-alpha"} {
			g := openFeed(t, leader, feedOpts{version: v, clusterID: 1})
			g.register(r, uint64(i+1), 0)
			g.initializedRows(subID{uint64(i + 1), r.ID})
		}
	})
	t.Run("Compatibility", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "8.5.0", clusterID: testClusterID})
		for i, api := range []cdcpb.ChangeDataRequest_KvAPI{cdcpb.ChangeDataRequest_TxnKV, cdcpb.ChangeDataRequest_RawKV} {
			req := f.registerReq(r, uint64(i+1), 0)
			req.KvApi = api
			f.sendReq(req)
			e, _ := f.errorOf(subID{uint64(i + 1), r.ID})
			require.NotNil(t, e.Compatibility, "%v", e)
			require.Equal(t, "6.2.0", e.Compatibility.RequiredVersion)
		}
	})
	t.Run("NotifyTxnStatus", func(t *testing.T) {
		f := openFeed(t, leader, feedOpts{version: "8.5.0", clusterID: testClusterID})
		require.NoError(t, f.send(&cdcpb.ChangeDataRequest{
			Header: f.header(), RegionId: r.ID,
			Request: &cdcpb.ChangeDataRequest_NotifyTxnStatus_{NotifyTxnStatus: &cdcpb.ChangeDataRequest_NotifyTxnStatus{}},
		}))
		require.Equal(t, codes.Unavailable, status.Code(f.streamErr()))
	})
}

func TestDeregister(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	_, err := h.cl.Split([]byte("m"))
	require.NoError(t, err)
	ra, rb := h.region("a"), h.region("x")
	f := h.feed("a", feedOpts{})
	f.register(ra, 1, 0)
	f.register(rb, 1, 0)
	f.register(ra, 2, 0)
	for _, k := range []subID{{1, ra.ID}, {1, rb.ID}, {2, ra.ID}} {
		f.initializedRows(k)
	}
	dereg := func(req, region uint64) {
		require.NoError(t, f.send(&cdcpb.ChangeDataRequest{
			Header: f.header(), RegionId: region, RequestId: req,
			Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}},
		}))
	}
	dereg(1, ra.ID)
	e, _ := f.errorOf(subID{1, ra.ID})
	require.NotNil(t, e.RegionNotFound)
	require.Equal(t, ra.ID, e.RegionNotFound.RegionId)
	dereg(1, 0) // every remaining region of request 1
	e, _ = f.errorOf(subID{1, rb.ID})
	require.NotNil(t, e.RegionNotFound)
	require.Equal(t, rb.ID, e.RegionNotFound.RegionId)
	// Request 2 goes on.
	s, c := h.txn(put("a", []byte("after")))
	rows := f.nextRows(subID{2, ra.ID}, 2)
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "a", s, 0, []byte("after"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "a", s, c, []byte("after"), nil},
	}, rows)
}

func TestCloseSendEndsStream(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.region("a")
	f := h.feed("a", feedOpts{})
	f.register(r, 1, 0)
	f.initializedRows(subID{1, r.ID})
	require.NoError(t, f.stream.CloseSend())
	require.ErrorIs(t, f.streamErr(), io.EOF)
}

func TestEventFeedV2(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.region("a")
	addr := h.leaderAddr("a")

	bad := openFeed(t, addr, feedOpts{v2: true, features: "stream-multiplexing,warp-drive", version: "8.5.0", clusterID: testClusterID})
	require.Equal(t, codes.Unimplemented, status.Code(bad.streamErr()))

	f := openFeed(t, addr, feedOpts{v2: true, features: "stream-multiplexing", version: "8.5.0", clusterID: testClusterID})
	f.register(r, 1, 0)
	f.register(r, 2, 0)
	f.initializedRows(subID{1, r.ID})
	f.initializedRows(subID{2, r.ID})
	got := map[uint64]bool{}
	for len(got) < 2 {
		if rts := f.next().ResolvedTs; rts != nil {
			require.Equal(t, []uint64{r.ID}, rts.Regions)
			got[rts.RequestId] = true
		}
	}
	require.Equal(t, map[uint64]bool{1: true, 2: true}, got)

	// V2 without features behaves like V1.
	g := openFeed(t, addr, feedOpts{v2: true, version: "8.5.0", clusterID: testClusterID})
	g.register(r, 3, 0)
	g.initializedRows(subID{3, r.ID})
	for {
		if rts := g.next().ResolvedTs; rts != nil {
			require.Zero(t, rts.RequestId)
			break
		}
	}
}

func TestTopologyErrorsAfterInit(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	_, err := h.cl.Split([]byte("m"))
	require.NoError(t, err)
	ra, rb := h.region("a"), h.region("x")
	f := h.feed("a", feedOpts{})
	f.register(ra, 1, 0)
	f.register(rb, 1, 0)
	f.initializedRows(subID{1, ra.ID})
	f.initializedRows(subID{1, rb.ID})

	t.Run("split", func(t *testing.T) {
		// Rows committed before the split arrive before the error.
		s, c := h.txn(put("x", []byte("x1")))
		regions, err := h.cl.Split([]byte("y"))
		require.NoError(t, err)
		e, rows := f.errorOf(subID{1, rb.ID})
		requireRows(t, []wantRow{
			{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "x", s, 0, []byte("x1"), nil},
			{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "x", s, c, []byte("x1"), nil},
		}, rows)
		require.NotNil(t, e.EpochNotMatch, "%v", e)
		require.Len(t, e.EpochNotMatch.CurrentRegions, 2)
		for i, cur := range e.EpochNotMatch.CurrentRegions {
			require.Equal(t, regions[i].ID, cur.Id)
			require.Equal(t, regions[i].StartKey, cur.StartKey)
			require.Equal(t, regions[i].Epoch.Version, cur.RegionEpoch.Version)
		}
	})
	t.Run("merge", func(t *testing.T) {
		left, right := h.region("x"), h.region("y")
		f.register(left, 2, 0)
		f.register(right, 2, 0)
		f.initializedRows(subID{2, left.ID})
		f.initializedRows(subID{2, right.ID})
		_, err := h.cl.Merge(left.ID, right.ID)
		require.NoError(t, err)
		e, _ := f.errorOf(subID{2, left.ID})
		require.NotNil(t, e.EpochNotMatch, "source: %v", e)
		require.Empty(t, e.EpochNotMatch.CurrentRegions)
		e, _ = f.errorOf(subID{2, right.ID})
		require.NotNil(t, e.RegionNotFound, "target: %v", e)
		require.Equal(t, right.ID, e.RegionNotFound.RegionId)
	})
	t.Run("leader transfer", func(t *testing.T) {
		to := h.follower(ra)
		require.NoError(t, h.cl.TransferLeader(ra.ID, to))
		e, _ := f.errorOf(subID{1, ra.ID})
		require.NotNil(t, e.NotLeader, "%v", e)
		require.Equal(t, ra.ID, e.NotLeader.RegionId)
		require.Equal(t, to, e.NotLeader.Leader.GetStoreId())
		// The new leader serves it.
		g := openFeed(t, h.addrs[to], feedOpts{version: "8.5.0", clusterID: testClusterID})
		g.register(h.region("a"), 1, 0)
		g.initializedRows(subID{1, ra.ID})
	})
	t.Run("store down", func(t *testing.T) {
		r := h.region("x")
		g := openFeed(t, h.addrs[r.Leader], feedOpts{version: "8.5.0", clusterID: testClusterID})
		g.register(r, 9, 0)
		g.initializedRows(subID{9, r.ID})
		require.NoError(t, h.cl.SetStoreUp(r.Leader, false, 0))
		require.Equal(t, codes.Unavailable, status.Code(g.streamErr()))
	})
}

// scanDuringChange registers a 16 MiB region with a consumer that stops
// reading after the first event, so the scan is provably unfinished when
// change runs; it returns the subscription's error and the rows before it.
func scanDuringChange(t *testing.T, h *harness, change func(r *cluster.Region)) (*cdcpb.Error, []*cdcpb.Event_Row, *cluster.Region) {
	t.Helper()
	loadBig(h, "k", 16<<10, 1024)
	r := h.region("k")
	f := h.feed("k", feedOpts{smallWindow: true})
	k := subID{1, r.ID}
	f.register(r, k.req, 0)
	f.until(func() bool { return f.logs[k] != nil && len(f.logs[k].rows) > 0 })
	f.pause()
	// Committed while the scan runs, before the change: its rows must come
	// before the error.
	s, c := h.txn(put("k/live", []byte("v")))
	change(r)
	f.resume()
	f.until(func() bool { return f.logs[k].err != nil })
	require.False(t, f.initialized[k], "the scan finished before the change")
	rows := f.logs[k].rows
	n := len(rows)
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "k/live", s, 0, []byte("v"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "k/live", s, c, []byte("v"), nil},
	}, liveOnly(rows, "k/live"))
	for i := 1; i < n; i++ {
		if rows[i].Type == cdcpb.Event_COMMITTED && rows[i-1].Type == cdcpb.Event_COMMITTED {
			require.Negative(t, bytes.Compare(rows[i-1].Key, rows[i].Key))
		}
	}
	return f.logs[k].err, rows, r
}

func liveOnly(rows []*cdcpb.Event_Row, key string) []*cdcpb.Event_Row {
	var out []*cdcpb.Event_Row
	for _, r := range rows {
		if string(r.Key) == key {
			out = append(out, r)
		}
	}
	return out
}

func TestSplitDuringIncrementalScan(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var regions []*cluster.Region
	e, _, _ := scanDuringChange(t, h, func(r *cluster.Region) {
		var err error
		regions, err = h.cl.Split([]byte("k/008000"))
		require.NoError(t, err)
	})
	require.NotNil(t, e.EpochNotMatch, "%v", e)
	require.Len(t, e.EpochNotMatch.CurrentRegions, 2)
	require.Equal(t, regions[0].ID, e.EpochNotMatch.CurrentRegions[0].Id)
	require.Equal(t, regions[1].ID, e.EpochNotMatch.CurrentRegions[1].Id)

	// Re-subscribing both halves from checkpoint 0 scans everything again.
	f := h.feed("k", feedOpts{})
	total := 0
	for i, r := range regions {
		f.register(r, uint64(i+1), 0)
		for _, row := range f.initializedRows(subID{uint64(i + 1), r.ID}) {
			require.True(t, r.ContainsRaw(row.Key))
			total++
		}
	}
	require.Equal(t, 16<<10+1, total)
}

func TestLeaderTransferDuringIncrementalScan(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var to uint64
	e, _, r := scanDuringChange(t, h, func(r *cluster.Region) {
		to = h.follower(r)
		require.NoError(t, h.cl.TransferLeader(r.ID, to))
	})
	require.NotNil(t, e.NotLeader, "%v", e)
	require.Equal(t, r.ID, e.NotLeader.RegionId)
	require.Equal(t, to, e.NotLeader.Leader.GetStoreId())
}

func TestCongestedWhenLiveRowsExceedQuota(t *testing.T) {
	h := newHarness(t, harnessOpts{memoryQuota: 256 << 10})
	r := h.region("a")
	f := h.feed("a", feedOpts{smallWindow: true})
	k := subID{1, r.ID}
	f.register(r, k.req, 0)
	f.initializedRows(k)
	f.pause()
	// 4 MiB of live rows cannot all be in flight to a consumer that does
	// not read: the quota runs out, nothing is dropped silently.
	loadBig(h, "a", 4<<10, 1024)
	f.resume()
	e, _ := f.errorOf(k)
	require.NotNil(t, e.Congested, "%v", e)
	require.Equal(t, r.ID, e.Congested.RegionId)
}

// TestResolvedTsGuarantee runs concurrent 2PC (single- and multi-region),
// async-commit, 1PC and rolled-back transactions over three regions on two
// stores while consumers check, on every message, that no COMMIT/COMMITTED
// at or below a received resolved ts ever follows it; at the end every
// commit must have been delivered exactly once.
func TestResolvedTsGuarantee(t *testing.T) {
	h := newHarness(t, harnessOpts{minTSInterval: 5 * time.Millisecond})
	for _, k := range []string{"g", "p"} {
		_, err := h.cl.Split([]byte(k))
		require.NoError(t, err)
	}
	mid := h.region("h")
	require.NoError(t, h.cl.TransferLeader(mid.ID, h.follower(mid)))
	regions := []*cluster.Region{h.region("a"), h.region("h"), h.region("q")}
	start := h.ts()
	feeds := map[uint64]*feed{}
	for _, r := range regions {
		f := feeds[r.Leader]
		if f == nil {
			f = openFeed(t, h.addrs[r.Leader], feedOpts{version: "8.5.0", clusterID: testClusterID})
			feeds[r.Leader] = f
		}
		f.register(r, 1, start)
	}
	for _, r := range regions {
		feeds[r.Leader].initializedRows(subID{1, r.ID})
	}

	type commitRec struct {
		key    string
		commit uint64
	}
	var (
		mu      sync.Mutex
		commits []commitRec
		errs    []error
	)
	deadline := time.Now().Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			ts := func() uint64 { v, _ := h.tso.TS(context.Background()); return v }
			for i := 0; time.Now().Before(deadline); i++ {
				a, b := fmt.Sprintf("a-%d-%d", w, i), fmt.Sprintf("h-%d-%d", w, i)
				c := fmt.Sprintf("q-%d-%d", w, i)
				s := ts()
				var done []commitRec
				switch i % 5 {
				case 0: // 2PC in one region
					if _, _, err := h.tryPrewrite(s, []mut{put(a, []byte("v")), put(a+"x", val(300, "big"))}, pwOpts{}); err != nil {
						fail(err)
						return
					}
					cts := ts()
					if err := h.tryCommit(s, cts, a, a+"x"); err != nil {
						fail(err)
						return
					}
					done = []commitRec{{a, cts}, {a + "x", cts}}
				case 1: // 2PC over two regions, primary first
					if _, _, err := h.tryPrewrite(s, []mut{put(b, []byte("v"))}, pwOpts{}); err != nil {
						fail(err)
						return
					}
					if _, _, err := h.tryPrewrite(s, []mut{put(c, []byte("v"))}, pwOpts{primary: b}); err != nil {
						fail(err)
						return
					}
					cts := ts()
					if err := h.tryCommit(s, cts, b); err != nil {
						fail(err)
						return
					}
					if err := h.tryCommit(s, cts, c); err != nil {
						fail(err)
						return
					}
					done = []commitRec{{b, cts}, {c, cts}}
				case 2: // async commit over two regions: commit ts = max min_commit_ts
					_, m1, err := h.tryPrewrite(s, []mut{put(a, []byte("v"))}, pwOpts{async: true, secondaries: []string{c}})
					if err != nil {
						fail(err)
						return
					}
					_, m2, err := h.tryPrewrite(s, []mut{put(c, []byte("v"))}, pwOpts{async: true, primary: a})
					if err != nil {
						fail(err)
						return
					}
					cts := max(m1, m2)
					if err := h.tryCommit(s, cts, c); err != nil {
						fail(err)
						return
					}
					if err := h.tryCommit(s, cts, a); err != nil {
						fail(err)
						return
					}
					done = []commitRec{{a, cts}, {c, cts}}
				case 3: // 1PC
					cts, _, err := h.tryPrewrite(s, []mut{put(b, []byte("v")), del(b + "y")}, pwOpts{onePC: true})
					if err != nil || cts == 0 {
						fail(fmt.Errorf("1pc: %v (commit ts %d)", err, cts))
						return
					}
					done = []commitRec{{b, cts}, {b + "y", cts}}
				case 4: // rolled back
					if _, _, err := h.tryPrewrite(s, []mut{put(c, []byte("v"))}, pwOpts{}); err != nil {
						fail(err)
						return
					}
					ctx, kv := h.route([]byte(c))
					if _, err := kv.KvBatchRollback(context.Background(), &kvrpcpb.BatchRollbackRequest{Context: ctx, StartVersion: s, Keys: [][]byte{[]byte(c)}}); err != nil {
						fail(err)
						return
					}
				}
				mu.Lock()
				commits = append(commits, done...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Empty(t, errs)
	require.NotEmpty(t, commits)

	// Read until every region is resolved past everything written.
	end := h.ts()
	seen := map[commitRec]int{}
	for _, r := range regions {
		f := feeds[r.Leader]
		f.until(func() bool { return f.resolved[subID{0, r.ID}] > end })
	}
	for _, f := range feeds {
		for k, l := range f.logs {
			require.Nil(t, l.err, "%v", k)
			for _, row := range l.rows {
				if row.Type == cdcpb.Event_COMMIT || row.Type == cdcpb.Event_COMMITTED {
					seen[commitRec{string(row.Key), row.CommitTs}]++
				}
			}
		}
	}
	for _, c := range commits {
		require.Equal(t, 1, seen[c], "commit %v delivered %d times", c, seen[c])
	}
	require.Len(t, seen, len(commits))
}

func TestServerIsBusyBeyondPendingScans(t *testing.T) {
	h := newHarness(t, harnessOpts{pendingScansLimit: 1})
	loadBig(h, "k", 16<<10, 1024)
	_, err := h.cl.Split([]byte("m"))
	require.NoError(t, err)
	rk, rm := h.region("k"), h.region("m")
	f := h.feed("k", feedOpts{smallWindow: true})
	f.register(rk, 1, 0)
	f.until(func() bool { return len(f.log(subID{1, rk.ID}).rows) > 0 })
	f.pause() // the 16 MiB scan stays pending
	f.register(rm, 2, 0)
	f.resume()
	e, _ := f.errorOf(subID{2, rm.ID})
	require.NotNil(t, e.ServerIsBusy, "%v", e)
	require.Equal(t, "too many pending incremental scans", e.ServerIsBusy.Reason)
	f.initializedRows(subID{1, rk.ID})
	// Once the scan is done, registering works again.
	f.register(rm, 2, 0)
	f.initializedRows(subID{2, rm.ID})
}

func TestServiceCloseEndsStreams(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.region("a")
	f := h.feed("a", feedOpts{})
	f.register(r, 1, 0)
	f.initializedRows(subID{1, r.ID})
	h.svcs[r.Leader].Close()
	require.Equal(t, codes.Unavailable, status.Code(f.streamErr()))
	// A closed service refuses new streams.
	g := h.feed("a", feedOpts{})
	require.Equal(t, codes.Unavailable, status.Code(g.streamErr()))
}

func TestDiscardConsumer(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	loadBig(h, "k", 1000, 100)
	_, err := h.cl.Split([]byte("k/000500"))
	require.NoError(t, err)
	regions := []*cluster.Region{h.region("k/000000"), h.region("k/000500")}
	st, err := cdc.DiscardConsumer(context.Background(), h.leaderAddr("k"), regions, cdc.DiscardOptions{ClusterID: testClusterID, UntilInitialized: true})
	require.NoError(t, err)
	require.EqualValues(t, 1000, st.Rows)
	require.Greater(t, st.Bytes, int64(1000*100))
}
