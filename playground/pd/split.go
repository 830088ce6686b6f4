package pd

import (
	"bytes"
	"context"
	"errors"

	"github.com/pingcap/kvproto/pkg/pdpb"

	"github.com/pitr-io/pitr/playground/cluster"
)

// SplitRegions splits regions at the given keys, which are
// memcomparable-encoded like every region key on the pdpb wire (BR encodes
// its split keys with codec.EncodeBytes before calling it). As PD's
// RegionSplitter (tikv/pd pkg/schedule/splitter/region_splitter.go):
//   - a key that already starts a region, or that falls in a region with no
//     leader, is not split and counts as unprocessed;
//   - RegionsId lists the regions that now start at a processed key;
//   - FinishedPercentage is 100 - unprocessed*100/len(keys), and 0 for no
//     keys.
//
// Splits are synchronous here (real PD waits for the split operators to
// finish, up to a timeout), so retry_limit changes nothing.
func (g *grpcService) SplitRegions(_ context.Context, req *pdpb.SplitRegionsRequest) (*pdpb.SplitRegionsResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	keys := req.GetSplitKeys()
	if len(keys) == 0 {
		return &pdpb.SplitRegionsResponse{Header: g.header()}, nil
	}
	var done [][]byte
	unprocessed := 0
	for _, enc := range keys {
		if !g.s.splitAt(enc) {
			unprocessed++
			continue
		}
		done = append(done, enc)
	}
	// As PD's ScanRegionsByKeyRange, the answer names the regions that start
	// at a processed key once every split is done.
	var ids []uint64
	seen := map[uint64]bool{}
	for _, enc := range done {
		if r := g.s.cluster.LocateEncoded(enc); r != nil && bytes.Equal(r.StartKey, enc) && !seen[r.ID] {
			seen[r.ID] = true
			ids = append(ids, r.ID)
		}
	}
	return &pdpb.SplitRegionsResponse{
		Header:             g.header(),
		RegionsId:          ids,
		FinishedPercentage: uint64(100 - unprocessed*100/len(keys)),
	}, nil
}

// splitAt splits the region holding the encoded key at it.
func (s *Server) splitAt(enc []byte) bool {
	r := s.cluster.LocateEncoded(enc)
	if r == nil || r.Leader == 0 || bytes.Equal(r.StartKey, enc) {
		return false
	}
	raw := cluster.DecodeKey(enc)
	if !bytes.Equal(cluster.EncodeKey(raw), enc) {
		return false // not a valid encoding: TiKV's split check rejects it
	}
	if _, err := s.cluster.Split(raw); err != nil {
		s.log.Debug("split regions: split failed", "key", enc, "error", err)
		return false
	}
	return true
}

// ScatterRegion scatters regions (regions_id, or the deprecated region_id).
// PD's scatterer spreads a group's peers and leaders over the stores; in the
// playground every store holds a peer of every region, so scattering moves
// only leaders: each region's leader goes to the up store that leads the
// fewest regions. A region that does not exist is reported in
// failed_regions_id and lowers finished_percentage (tikv/pd
// server/grpc_service.go scatterRegions: 100 - 100*failures/(ops+failures));
// no regions is an error, as PD's ErrEmptyRegion.
func (g *grpcService) ScatterRegion(_ context.Context, req *pdpb.ScatterRegionRequest) (*pdpb.ScatterRegionResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	ids := req.GetRegionsId()
	if len(ids) == 0 {
		//nolint:staticcheck // the deprecated single-region form is still sent by old clients
		if id := req.GetRegionId(); id != 0 {
			if _, err := g.s.cluster.RegionByID(id); err != nil {
				return &pdpb.ScatterRegionResponse{Header: g.errorHeader(pdpb.ErrorType_REGION_NOT_FOUND, "region %d not found", id)}, nil
			}
			g.s.scatter(id)
			return &pdpb.ScatterRegionResponse{Header: g.header(), FinishedPercentage: 100}, nil
		}
		return nil, errors.New("[PD:core:ErrEmptyRegion]region is empty")
	}
	var failed []uint64
	ops := 0
	for _, id := range ids {
		if _, err := g.s.cluster.RegionByID(id); err != nil {
			failed = append(failed, id)
			continue
		}
		g.s.scatter(id)
		ops++
	}
	if len(ids) == 1 && len(failed) == 1 {
		return nil, errors.New("[PD:core:ErrRegionNotFound]region not found")
	}
	pct := 100
	if len(failed) > 0 {
		pct = 100 - 100*len(failed)/(ops+len(failed))
	}
	return &pdpb.ScatterRegionResponse{Header: g.header(), FinishedPercentage: uint64(pct), FailedRegionsId: failed}, nil
}

// scatter moves the region's leader to the up store leading the fewest
// regions (ties: lowest id), unless it already has that few.
func (s *Server) scatter(id uint64) {
	regions, count, _ := s.leaderCounts()
	var cur uint64
	for _, r := range regions {
		if r.ID == id {
			cur = r.Leader
		}
	}
	best, n := uint64(0), -1
	for st, c := range count {
		if n < 0 || c < n || (c == n && st < best) {
			best, n = st, c
		}
	}
	if best == 0 || best == cur || (cur != 0 && count[cur] <= n+1) {
		return
	}
	if err := s.cluster.TransferLeader(id, best); err != nil {
		s.log.Debug("scatter: transfer leader failed", "region", id, "error", err)
	}
}
