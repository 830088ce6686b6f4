package cdc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
)

// DiscardOptions tune DiscardConsumer.
type DiscardOptions struct {
	// ClusterID goes in the request header (checked for versions ≥ 5.3.0).
	ClusterID uint64
	// CheckpointTS is every subscription's checkpoint_ts: the incremental
	// scan sends what was committed after it.
	CheckpointTS uint64
	// Version is header.ticdc_version (default "8.5.0").
	Version string
	// UntilInitialized returns as soon as every region sent INITIALIZED
	// (measures the incremental scan); otherwise it reads until ctx ends.
	UntilInitialized bool
}

// DiscardStats are what a DiscardConsumer read.
type DiscardStats struct {
	Bytes    int64 // encoded size of every ChangeDataEvent received
	Rows     int64 // rows other than INITIALIZED
	Resolved int64 // ResolvedTs messages
}

// DiscardConsumer subscribes every region on the store at addr (the
// regions must be led by that store) as a TiCDC client would and discards
// what it receives, counting it. It returns when ctx ends (with a nil
// error) or, with UntilInitialized, once every region is initialized. A
// region error or a broken stream is an error. It is the consumer side of
// the CDC throughput benchmark.
func DiscardConsumer(ctx context.Context, addr string, regions []*cluster.Region, opt DiscardOptions) (DiscardStats, error) {
	var st DiscardStats
	if opt.Version == "" {
		opt.Version = "8.5.0"
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return st, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cdcpb.NewChangeDataClient(cc).EventFeed(sctx)
	if err != nil {
		return st, fmt.Errorf("open event feed: %w", err)
	}
	for i, r := range regions {
		ep := r.Epoch
		req := &cdcpb.ChangeDataRequest{
			Header:       &cdcpb.Header{ClusterId: opt.ClusterID, TicdcVersion: opt.Version},
			RegionId:     r.ID,
			RegionEpoch:  &ep,
			CheckpointTs: opt.CheckpointTS,
			StartKey:     r.StartKey,
			EndKey:       r.EndKey,
			RequestId:    uint64(i + 1),
			Request:      &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
		}
		if err := stream.Send(req); err != nil {
			return st, fmt.Errorf("register region %d: %w", r.ID, err)
		}
	}
	pending := len(regions)
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) {
				return st, nil
			}
			return st, fmt.Errorf("receive: %w", err)
		}
		st.Bytes += int64(ev.Size())
		if ev.ResolvedTs != nil {
			st.Resolved++
		}
		for _, e := range ev.Events {
			if er := e.GetError(); er != nil {
				return st, fmt.Errorf("region %d: %v", e.RegionId, er)
			}
			for _, row := range e.GetEntries().GetEntries() {
				if row.Type == cdcpb.Event_INITIALIZED {
					pending--
					continue
				}
				st.Rows++
			}
		}
		if opt.UntilInitialized && pending == 0 {
			return st, nil
		}
	}
}
