package playground

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/importer"
)

// importClients returns an import_sstpb client per store.
func importClients(t *testing.T, p *Playground) map[uint64]import_sstpb.ImportSSTClient {
	t.Helper()
	out := map[uint64]import_sstpb.ImportSSTClient{}
	for id, addr := range p.StoreAddrs() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		out[id] = import_sstpb.NewImportSSTClient(conn)
	}
	return out
}

// batch is one WriteBatch: a commit ts and key=value pairs (value "" and
// del: a Delete).
type batch struct {
	ts    uint64
	pairs []*import_sstpb.Pair
}

func pair(k, v string) *import_sstpb.Pair {
	return &import_sstpb.Pair{Key: []byte(k), Value: []byte(v)}
}
func del(k string) *import_sstpb.Pair {
	return &import_sstpb.Pair{Key: []byte(k), Op: import_sstpb.Pair_Delete}
}

// writeSST streams meta and batches to one store's Write.
func writeSST(ctx context.Context, ic import_sstpb.ImportSSTClient, meta *import_sstpb.SSTMeta, bs ...batch) ([]*import_sstpb.SSTMeta, error) {
	ws, err := ic.Write(ctx)
	if err != nil {
		return nil, err
	}
	send := func(r *import_sstpb.WriteRequest) error {
		if err := ws.Send(r); err != nil {
			_, rerr := ws.CloseAndRecv()
			return rerr
		}
		return nil
	}
	if meta != nil {
		if err := send(&import_sstpb.WriteRequest{Chunk: &import_sstpb.WriteRequest_Meta{Meta: meta}}); err != nil {
			return nil, err
		}
	}
	for _, b := range bs {
		if err := send(&import_sstpb.WriteRequest{Chunk: &import_sstpb.WriteRequest_Batch{Batch: &import_sstpb.WriteBatch{CommitTs: b.ts, Pairs: b.pairs}}}); err != nil {
			return nil, err
		}
	}
	resp, err := ws.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, status.Error(codes.Internal, "WriteResponse.error is never filled by TiKV: "+resp.Error.String())
	}
	return resp.Metas, nil
}

// sstMeta is the meta a correct client sends: the region, its epoch, the
// encoded inclusive range of the keys, API V1.
func sstMeta(r *cluster.Region, first, last string) *import_sstpb.SSTMeta {
	id := uuid.New()
	ep := r.Epoch
	return &import_sstpb.SSTMeta{Uuid: id[:], RegionId: r.ID, RegionEpoch: &ep,
		Range:      &import_sstpb.Range{Start: cluster.EncodeKey([]byte(first)), End: cluster.EncodeKey([]byte(last))},
		ApiVersion: kvrpcpb.APIVersion_V1}
}

func ingestCtx(r *cluster.Region) *kvrpcpb.Context {
	ep := r.Epoch
	return &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.LeaderPeer()}
}

// writeAll writes the same SST to every peer's store and returns the
// leader's metas.
func writeAll(t *testing.T, ctx context.Context, ics map[uint64]import_sstpb.ImportSSTClient, r *cluster.Region, meta *import_sstpb.SSTMeta, bs ...batch) []*import_sstpb.SSTMeta {
	t.Helper()
	var leader []*import_sstpb.SSTMeta
	for _, p := range r.Peers {
		metas, err := writeSST(ctx, ics[p.StoreId], meta, bs...)
		require.NoError(t, err)
		if p.StoreId == r.Leader {
			leader = metas
		}
	}
	return leader
}

// TestImportWriteIngest writes versions through import_sstpb Write on every
// store and MultiIngest at the leader, then reads them back with client-go at
// their own commit timestamps.
func TestImportWriteIngest(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	cli := newClient(t, ctx, p.PDAddr())
	defer cli.Close()
	ics := importClients(t, p)

	ts1, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	ts2, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)

	_, err = p.Cluster.Split([]byte("imp/"))
	require.NoError(t, err)
	r := p.Cluster.LocateRaw([]byte("imp/a"))
	long := string(make([]byte, 300))
	meta := sstMeta(r, "imp/a", "imp/c") // one name for every peer's copy, as Lightning does
	metas := writeAll(t, ctx, ics, r, meta,
		batch{ts2, []*import_sstpb.Pair{del("imp/a")}},
		batch{ts1, []*import_sstpb.Pair{pair("imp/a", "a1"), pair("imp/b", "b1"), pair("imp/c", long)}})

	// Write answers with the client's meta, only the CF changed, per CF that
	// holds data (a value over 255 bytes goes to default).
	require.Len(t, metas, 2)
	for i, cf := range []string{"default", "write"} {
		want := *meta
		want.CfName = cf
		require.Equal(t, &want, metas[i])
	}

	// A stale epoch is refused with EpochNotMatch and nothing is ingested.
	stale := ingestCtx(r)
	stale.RegionEpoch.Version--
	resp, err := ics[r.Leader].MultiIngest(ctx, &import_sstpb.MultiIngestRequest{Context: stale, Ssts: metas})
	require.NoError(t, err)
	require.NotNil(t, resp.GetError().GetEpochNotMatch())

	resp, err = ics[r.Leader].MultiIngest(ctx, &import_sstpb.MultiIngestRequest{Context: ingestCtx(r), Ssts: metas})
	require.NoError(t, err)
	require.Nil(t, resp.GetError())
	require.Zero(t, p.PendingSSTs(), "the ingest frees every store's copy")

	v, err := cli.GetSnapshot(ts1).Get(ctx, []byte("imp/a"))
	require.NoError(t, err)
	require.Equal(t, "a1", string(v))
	_, err = cli.GetSnapshot(ts2).Get(ctx, []byte("imp/a"))
	require.Error(t, err, "deleted at ts2")
	v, err = cli.GetSnapshot(ts2).Get(ctx, []byte("imp/b"))
	require.NoError(t, err)
	require.Equal(t, "b1", string(v))
	v, err = cli.GetSnapshot(ts2).Get(ctx, []byte("imp/c"))
	require.NoError(t, err)
	require.Equal(t, long, string(v))
	_, err = cli.GetSnapshot(ts1-1).Get(ctx, []byte("imp/b"))
	require.Error(t, err, "not visible before its commit ts")

	// Ingesting again: the files are gone (StaleCommand, as TiKV's
	// importer.exist check answers a retried ingest that already succeeded).
	resp, err = ics[r.Leader].MultiIngest(ctx, &import_sstpb.MultiIngestRequest{Context: ingestCtx(r), Ssts: metas})
	require.NoError(t, err)
	require.NotNil(t, resp.GetError().GetStaleCommand())
	require.Contains(t, resp.GetError().GetMessage(), "not exist") // TiKV: "doest not exist"
}

// TestImportWriteRejects: what TiKV's Write refuses, each as a gRPC status
// UNKNOWN with TiKV's error text, never in WriteResponse.error.
func TestImportWriteRejects(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	ics := importClients(t, p)
	_, err = p.Cluster.Split([]byte("w/"))
	require.NoError(t, err)
	r := p.Cluster.LocateRaw([]byte("w/a"))
	ic := ics[r.Leader]
	withEpoch := func(f func(*metapb.RegionEpoch)) *import_sstpb.SSTMeta {
		m := sstMeta(r, "w/a", "w/b")
		f(m.RegionEpoch)
		return m
	}
	for _, tc := range []struct {
		name    string
		meta    *import_sstpb.SSTMeta
		batches []batch
		want    string
	}{
		{name: "keys out of order across batches", meta: sstMeta(r, "w/a", "w/b"),
			batches: []batch{{9, []*import_sstpb.Pair{pair("w/b", "1")}}, {9, []*import_sstpb.Pair{pair("w/a", "1")}}},
			want:    "strict ascending order"},
		{name: "keys out of order in a batch", meta: sstMeta(r, "w/a", "w/b"),
			batches: []batch{{9, []*import_sstpb.Pair{pair("w/b", "1"), pair("w/a", "1")}}},
			want:    "strict ascending order"},
		{name: "duplicate version", meta: sstMeta(r, "w/a", "w/a"),
			batches: []batch{{9, []*import_sstpb.Pair{pair("w/a", "1")}}, {9, []*import_sstpb.Pair{pair("w/a", "2")}}},
			want:    "strict ascending order"},
		{name: "commit_ts ascending for one key", meta: sstMeta(r, "w/a", "w/a"),
			batches: []batch{{5, []*import_sstpb.Pair{pair("w/a", "1")}}, {9, []*import_sstpb.Pair{pair("w/a", "2")}}},
			want:    "strict ascending order"},
		{name: "zero commit_ts", meta: sstMeta(r, "w/a", "w/a"),
			batches: []batch{{0, []*import_sstpb.Pair{pair("w/a", "1")}}}, want: "BadFormat"},
		{name: "batch before meta", batches: []batch{{9, []*import_sstpb.Pair{pair("w/a", "1")}}}, want: "InvalidChunk"},
		{name: "no uuid", meta: func() *import_sstpb.SSTMeta { m := sstMeta(r, "w/a", "w/a"); m.Uuid = nil; return m }(), want: "InvalidChunk"},
		{name: "region unknown to the store", meta: func() *import_sstpb.SSTMeta { m := sstMeta(r, "w/a", "w/a"); m.RegionId = 999; return m }(),
			want: `RequestTooOld("region 999 is not found")`},
		{name: "stale version", meta: withEpoch(func(e *metapb.RegionEpoch) { e.Version-- }), want: "RequestTooOld(\"request region"},
		{name: "stale conf_ver", meta: withEpoch(func(e *metapb.RegionEpoch) { e.ConfVer-- }), want: "RequestTooOld(\"request region"},
		{name: "version ahead", meta: withEpoch(func(e *metapb.RegionEpoch) { e.Version++ }), want: "RequestTooNew("},
		{name: "conf_ver ahead", meta: withEpoch(func(e *metapb.RegionEpoch) { e.ConfVer++ }), want: "RequestTooNew("},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := writeSST(ctx, ic, tc.meta, tc.batches...)
			require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), tc.want)
		})
	}
	require.Zero(t, p.PendingSSTs(), "a refused write leaves no SST")

	// Same key newest first, then the next key: accepted.
	_, err = writeSST(ctx, ic, sstMeta(r, "w/a", "w/b"),
		batch{9, []*import_sstpb.Pair{pair("w/a", "2")}}, batch{5, []*import_sstpb.Pair{pair("w/a", "1"), pair("w/b", "1")}})
	require.NoError(t, err)
}

// TestImportIngestRejects: what TiKV refuses at ingest — before the command
// (api version, region, the leader's file) and as each peer applies it
// (check_sst_for_ingestion) — and what the playground refuses where TiKV
// would crash (a follower without its copy).
func TestImportIngestRejects(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	cli := newClient(t, ctx, p.PDAddr())
	defer cli.Close()
	ics := importClients(t, p)
	_, err = p.Cluster.Split([]byte("g/"))
	require.NoError(t, err)
	_, err = p.Cluster.Split([]byte("g/m"))
	require.NoError(t, err)
	r := p.Cluster.LocateRaw([]byte("g/a")) // [g/, g/m)
	ts, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	b := batch{ts, []*import_sstpb.Pair{pair("g/a", "1"), pair("g/b", "1")}}
	ingest := func(r *cluster.Region, metas []*import_sstpb.SSTMeta) (*import_sstpb.IngestResponse, error) {
		return ics[r.Leader].MultiIngest(ctx, &import_sstpb.MultiIngestRequest{Context: ingestCtx(r), Ssts: metas})
	}
	requireNotIngested := func(t *testing.T) {
		t.Helper()
		_, err := cli.GetSnapshot(ts).Get(ctx, []byte("g/a"))
		require.Error(t, err, "nothing ingested")
	}

	t.Run("no range on a region that does not start at the beginning", func(t *testing.T) {
		m := sstMeta(r, "g/a", "g/b")
		m.Range = nil
		resp, err := ingest(r, writeAll(t, ctx, ics, r, m, b))
		require.NoError(t, err)
		require.NotNil(t, resp.GetError().GetKeyNotInRegion(), "%v", resp.GetError())
		requireNotIngested(t)
		require.Zero(t, p.PendingSSTs(), "the failed apply deletes every peer's copy")
	})
	t.Run("raw keys as the range", func(t *testing.T) {
		m := sstMeta(r, "g/a", "g/b")
		m.Range = &import_sstpb.Range{Start: []byte("g/a"), End: []byte("g/b")}
		resp, err := ingest(r, writeAll(t, ctx, ics, r, m, b))
		require.NoError(t, err)
		// Raw "g/a".."g/b" lies inside this region's encoded bounds, so
		// TiKV would ingest it; the encoded keys are past the declared end.
		require.Contains(t, resp.GetError().GetMessage(), "outside its declared range")
		requireNotIngested(t)
	})
	t.Run("range past the region end", func(t *testing.T) {
		resp, err := ingest(r, writeAll(t, ctx, ics, r, sstMeta(r, "g/a", "g/z"), b))
		require.NoError(t, err)
		require.NotNil(t, resp.GetError().GetKeyNotInRegion(), "%v", resp.GetError())
		requireNotIngested(t)
	})
	t.Run("keys outside the declared range", func(t *testing.T) {
		resp, err := ingest(r, writeAll(t, ctx, ics, r, sstMeta(r, "g/a", "g/a"), b))
		require.NoError(t, err)
		require.Contains(t, resp.GetError().GetMessage(), "outside its declared range")
		requireNotIngested(t)
	})
	for _, tc := range []struct {
		name string
		v    kvrpcpb.APIVersion
	}{{"api v2 with non-TiDB keys", kvrpcpb.APIVersion_V2}, {"api v1ttl", kvrpcpb.APIVersion_V1TTL}} {
		t.Run(tc.name, func(t *testing.T) {
			m := sstMeta(r, "g/a", "g/b")
			m.ApiVersion = tc.v
			_, err := ingest(r, writeAll(t, ctx, ics, r, m, b))
			require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), "IncompatibleApiVersion")
			requireNotIngested(t)
		})
	}
	t.Run("a follower lacks its copy", func(t *testing.T) {
		m := sstMeta(r, "g/a", "g/b")
		metas, err := writeSST(ctx, ics[r.Leader], m, b)
		require.NoError(t, err)
		resp, err := ingest(r, metas)
		require.NoError(t, err)
		require.Contains(t, resp.GetError().GetMessage(), "has no copy of SST")
		requireNotIngested(t)
	})
	t.Run("the leader lacks the file", func(t *testing.T) {
		m := sstMeta(r, "g/a", "g/b")
		for _, pr := range r.Peers {
			if pr.StoreId != r.Leader {
				_, err := writeSST(ctx, ics[pr.StoreId], m, b)
				require.NoError(t, err)
			}
		}
		m2 := *m
		m2.CfName = "write"
		resp, err := ingest(r, []*import_sstpb.SSTMeta{&m2})
		require.NoError(t, err)
		require.NotNil(t, resp.GetError().GetStaleCommand(), "%v", resp.GetError())
		require.Contains(t, resp.GetError().GetMessage(), "not exist") // TiKV: "doest not exist"
		requireNotIngested(t)
	})
	t.Run("the region split after the write", func(t *testing.T) {
		metas := writeAll(t, ctx, ics, r, sstMeta(r, "g/a", "g/b"), b)
		_, err := p.Cluster.Split([]byte("g/0")) // the right half keeps the id
		require.NoError(t, err)
		now := p.Cluster.LocateRaw([]byte("g/a"))
		resp, err := ingest(now, metas) // current epoch in the context, the old one in the SST
		require.NoError(t, err)
		require.NotNil(t, resp.GetError().GetEpochNotMatch(), "%v", resp.GetError())
		requireNotIngested(t)
		r = now
	})
	t.Run("correct", func(t *testing.T) {
		resp, err := ingest(r, writeAll(t, ctx, ics, r, sstMeta(r, "g/a", "g/b"), b))
		require.NoError(t, err)
		require.Nil(t, resp.GetError())
		v, err := cli.GetSnapshot(ts).Get(ctx, []byte("g/a"))
		require.NoError(t, err)
		require.Equal(t, "1", string(v))
	})
}

// TestImportWriteStall: in normal mode, ingests under write pressure get
// ServerIsBusy; import mode lifts it until its timeout.
func TestImportWriteStall(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1,
		Import: importer.Limits{BusyFiles: 2, BusyWindow: time.Hour, ImportModeTimeout: 2 * time.Second}})
	require.NoError(t, err)
	defer p.Close()
	cli := newClient(t, ctx, p.PDAddr())
	defer cli.Close()
	ics := importClients(t, p)
	r := p.Cluster.LocateRaw([]byte("s/a"))
	ingestOne := func(k string) *import_sstpb.IngestResponse {
		ts, err := cli.CurrentTimestamp("global")
		require.NoError(t, err)
		metas := writeAll(t, ctx, ics, r, sstMeta(r, k, k), batch{ts, []*import_sstpb.Pair{pair(k, "1")}})
		resp, err := ics[r.Leader].MultiIngest(ctx, &import_sstpb.MultiIngestRequest{Context: ingestCtx(r), Ssts: metas})
		require.NoError(t, err)
		return resp
	}
	require.Nil(t, ingestOne("s/a").GetError())
	require.Nil(t, ingestOne("s/b").GetError())
	busy := ingestOne("s/c")
	require.NotNil(t, busy.GetError().GetServerIsBusy(), "%v", busy.GetError())
	require.EqualValues(t, 1, p.ImportStats().Busy)

	leader := ics[r.Leader]
	_, err = leader.SwitchMode(ctx, &import_sstpb.SwitchModeRequest{Mode: import_sstpb.SwitchMode_Import})
	require.NoError(t, err)
	require.Nil(t, ingestOne("s/d").GetError(), "import mode lifts the write stall")

	// Without a refresh the store returns to normal mode.
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := leader.GetMode(ctx, &import_sstpb.GetModeRequest{})
		require.NoError(t, err)
		if m.GetMode() == import_sstpb.SwitchMode_Normal {
			break
		}
		require.True(t, time.Now().Before(deadline), "import mode never timed out")
		time.Sleep(50 * time.Millisecond)
	}
	require.NotNil(t, ingestOne("s/e").GetError().GetServerIsBusy())
}
