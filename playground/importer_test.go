package playground

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

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

	ts1, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	ts2, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)

	r := p.Cluster.LocateRaw([]byte("imp/a"))
	ep := r.Epoch
	var metas []*import_sstpb.SSTMeta
	var leaderClient import_sstpb.ImportSSTClient
	sstID := uuid.New() // one name for every peer's copy, as Lightning does
	for id, addr := range p.StoreAddrs() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		ic := import_sstpb.NewImportSSTClient(conn)
		ws, err := ic.Write(ctx)
		require.NoError(t, err)
		require.NoError(t, ws.Send(&import_sstpb.WriteRequest{Chunk: &import_sstpb.WriteRequest_Meta{Meta: &import_sstpb.SSTMeta{Uuid: sstID[:], RegionId: r.ID, RegionEpoch: &ep}}}))
		require.NoError(t, ws.Send(&import_sstpb.WriteRequest{Chunk: &import_sstpb.WriteRequest_Batch{Batch: &import_sstpb.WriteBatch{
			CommitTs: ts1, Pairs: []*import_sstpb.Pair{{Key: []byte("imp/a"), Value: []byte("a1")}, {Key: []byte("imp/b"), Value: []byte("b1")}},
		}}}))
		require.NoError(t, ws.Send(&import_sstpb.WriteRequest{Chunk: &import_sstpb.WriteRequest_Batch{Batch: &import_sstpb.WriteBatch{
			CommitTs: ts2, Pairs: []*import_sstpb.Pair{{Key: []byte("imp/a"), Op: import_sstpb.Pair_Delete}},
		}}}))
		resp, err := ws.CloseAndRecv()
		require.NoError(t, err)
		require.Nil(t, resp.Error)
		if id == r.Leader {
			metas = resp.Metas
			leaderClient = ic
		}
	}
	require.NotNil(t, leaderClient)

	// A stale epoch is refused with EpochNotMatch and nothing is ingested.
	stale := ep
	stale.Version--
	resp, err := leaderClient.MultiIngest(ctx, &import_sstpb.MultiIngestRequest{
		Context: &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &stale, Peer: r.LeaderPeer()}, Ssts: metas,
	})
	require.NoError(t, err)
	require.NotNil(t, resp.GetError().GetEpochNotMatch())

	resp, err = leaderClient.MultiIngest(ctx, &import_sstpb.MultiIngestRequest{
		Context: &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.LeaderPeer()}, Ssts: metas,
	})
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
	_, err = cli.GetSnapshot(ts1-1).Get(ctx, []byte("imp/b"))
	require.Error(t, err, "not visible before its commit ts")
}
