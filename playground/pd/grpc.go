package pd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
)

// grpcService serves pdpb.PD on the etcd client URL. RPCs the playground
// does not need stay Unimplemented, which the PD client tolerates.
type grpcService struct {
	pdpb.UnimplementedPDServer
	s *Server
}

var _ pdpb.PDServer = (*grpcService)(nil)

func (g *grpcService) header() *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{ClusterId: g.s.clusterID}
}

func (g *grpcService) errorHeader(t pdpb.ErrorType, format string, args ...any) *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{
		ClusterId: g.s.clusterID,
		Error:     &pdpb.Error{Type: t, Message: fmt.Sprintf(format, args...)},
	}
}

// validate checks a request the way PD's validateRequest does: a closed
// server is unavailable and a wrong cluster id fails the precondition.
func (g *grpcService) validate(h *pdpb.RequestHeader) error {
	if g.s.isClosed() {
		return status.Error(codes.Unavailable, ErrClosed.Error())
	}
	if h.GetClusterId() != g.s.clusterID {
		return status.Errorf(codes.FailedPrecondition, "mismatch cluster id, need %d but got %d", g.s.clusterID, h.GetClusterId())
	}
	return nil
}

func (g *grpcService) member() *pdpb.Member {
	return &pdpb.Member{
		Name:          "pd",
		MemberId:      g.s.memberID,
		PeerUrls:      []string{g.s.peerURL},
		ClientUrls:    []string{g.s.URL()},
		BinaryVersion: cluster.StoreVersion,
	}
}

// GetMembers does not check the cluster id: clients learn it from here.
func (g *grpcService) GetMembers(context.Context, *pdpb.GetMembersRequest) (*pdpb.GetMembersResponse, error) {
	if g.s.isClosed() {
		return &pdpb.GetMembersResponse{Header: &pdpb.ResponseHeader{
			Error: &pdpb.Error{Type: pdpb.ErrorType_UNKNOWN, Message: ErrClosed.Error()},
		}}, nil
	}
	m := g.member()
	return &pdpb.GetMembersResponse{
		Header:     g.header(),
		Members:    []*pdpb.Member{m},
		Leader:     m,
		EtcdLeader: m,
	}, nil
}

// GetClusterInfo does not check the cluster id either (the client sends none).
func (g *grpcService) GetClusterInfo(context.Context, *pdpb.GetClusterInfoRequest) (*pdpb.GetClusterInfoResponse, error) {
	if g.s.isClosed() {
		return &pdpb.GetClusterInfoResponse{Header: &pdpb.ResponseHeader{
			Error: &pdpb.Error{Type: pdpb.ErrorType_UNKNOWN, Message: ErrClosed.Error()},
		}}, nil
	}
	return &pdpb.GetClusterInfoResponse{
		Header:       g.header(),
		ServiceModes: []pdpb.ServiceMode{pdpb.ServiceMode_PD_SVC_MODE},
	}, nil
}

// Tso answers each request with count timestamps, returning the last one.
// The stream ends when the server closes, so Close is not held up by it.
func (g *grpcService) Tso(stream pdpb.PD_TsoServer) error {
	ctx := stream.Context()
	reqs := make(chan *pdpb.TsoRequest)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var req *pdpb.TsoRequest
		select {
		case <-g.s.closing:
			return status.Error(codes.Unavailable, ErrClosed.Error())
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req = <-reqs:
		}
		if err := g.validate(req.GetHeader()); err != nil {
			return err
		}
		p, l, err := g.s.tso.next(ctx, req.GetCount(), time.Now().UnixMilli())
		if err != nil {
			return status.Error(codes.Unknown, err.Error())
		}
		if err := stream.Send(&pdpb.TsoResponse{
			Header:    g.header(),
			Count:     req.GetCount(),
			Timestamp: &pdpb.Timestamp{Physical: p, Logical: l},
		}); err != nil {
			return err
		}
	}
}

// GetMinTS is what API-service-mode clients ask; in PD mode it is the TSO.
func (g *grpcService) GetMinTS(ctx context.Context, req *pdpb.GetMinTSRequest) (*pdpb.GetMinTSResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	p, l, err := g.s.tso.next(ctx, 1, time.Now().UnixMilli())
	if err != nil {
		return &pdpb.GetMinTSResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.GetMinTSResponse{Header: g.header(), Timestamp: &pdpb.Timestamp{Physical: p, Logical: l}}, nil
}

func (g *grpcService) IsBootstrapped(_ context.Context, req *pdpb.IsBootstrappedRequest) (*pdpb.IsBootstrappedResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	return &pdpb.IsBootstrappedResponse{Header: g.header(), Bootstrapped: true}, nil
}

func (g *grpcService) Bootstrap(_ context.Context, req *pdpb.BootstrapRequest) (*pdpb.BootstrapResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	return &pdpb.BootstrapResponse{Header: g.errorHeader(pdpb.ErrorType_ALREADY_BOOTSTRAPPED, "cluster %d is already bootstrapped", g.s.clusterID)}, nil
}

// AllocID allocates count ids (at least one) and returns the last, as PD's
// id allocator does.
func (g *grpcService) AllocID(_ context.Context, req *pdpb.AllocIDRequest) (*pdpb.AllocIDResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	count := max(req.GetCount(), 1)
	var id uint64
	for range count {
		var err error
		if id, err = g.s.cluster.AllocID(); err != nil {
			return &pdpb.AllocIDResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
		}
	}
	return &pdpb.AllocIDResponse{Header: g.header(), Id: id, Count: count}, nil
}

func (g *grpcService) GetClusterConfig(_ context.Context, req *pdpb.GetClusterConfigRequest) (*pdpb.GetClusterConfigResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	return &pdpb.GetClusterConfigResponse{
		Header:  g.header(),
		Cluster: &metapb.Cluster{Id: g.s.clusterID, MaxPeerCount: uint32(len(g.s.cluster.Stores()))},
	}, nil
}

func (g *grpcService) GetStore(_ context.Context, req *pdpb.GetStoreRequest) (*pdpb.GetStoreResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	st, err := g.s.cluster.Store(req.GetStoreId())
	if err != nil {
		return &pdpb.GetStoreResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "invalid store ID %d, not found", req.GetStoreId())}, nil
	}
	return &pdpb.GetStoreResponse{
		Header: g.header(),
		Store:  st.Meta(),
		Stats:  &pdpb.StoreStats{StoreId: st.ID, StartTime: uint32(st.StartTS)},
	}, nil
}

// GetAllStores lists every store. A store that is down stays listed as Up,
// as PD keeps it until it is taken offline; clients probe liveness
// themselves. There are no tombstones, so exclude_tombstone_stores changes
// nothing.
func (g *grpcService) GetAllStores(_ context.Context, req *pdpb.GetAllStoresRequest) (*pdpb.GetAllStoresResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	var stores []*metapb.Store
	for _, st := range g.s.cluster.Stores() {
		m := st.Meta()
		if req.GetExcludeTombstoneStores() && m.GetNodeState() == metapb.NodeState_Removed {
			continue
		}
		stores = append(stores, m)
	}
	return &pdpb.GetAllStoresResponse{Header: g.header(), Stores: stores}, nil
}

// downPeers lists the region's peers on stores that are down.
func (s *Server) downPeers(r *cluster.Region) []*pdpb.PeerStats {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	if len(s.downSince) == 0 {
		return nil
	}
	now := s.wallNow()
	var out []*pdpb.PeerStats
	for i := range r.Peers {
		since, ok := s.downSince[r.Peers[i].StoreId]
		if !ok {
			continue
		}
		p := r.Peers[i]
		out = append(out, &pdpb.PeerStats{Peer: &p, DownSeconds: uint64(max(now.Sub(since), 0) / time.Second)})
	}
	return out
}

func (g *grpcService) regionResponse(r *cluster.Region) *pdpb.GetRegionResponse {
	if r == nil {
		// PD answers a miss with an empty, successful response.
		return &pdpb.GetRegionResponse{Header: g.header()}
	}
	return &pdpb.GetRegionResponse{
		Header:    g.header(),
		Region:    r.Meta(),
		Leader:    g.s.leaderOf(r),
		DownPeers: g.s.downPeers(r),
	}
}

// leaderOf is the region's leader as PD knows it: nil when it has none or
// PD has not heard from it since a restart.
func (s *Server) leaderOf(r *cluster.Region) *metapb.Peer {
	if !s.leaderKnown(r.ID) {
		return nil
	}
	return r.LeaderPeer()
}

// pbRegion is a region of a scan; PD fills an unknown leader with an empty
// peer (server/grpc_service.go ScanRegions).
func (g *grpcService) pbRegion(r *cluster.Region) *pdpb.Region {
	leader := g.s.leaderOf(r)
	if leader == nil {
		leader = &metapb.Peer{}
	}
	return &pdpb.Region{Region: r.Meta(), Leader: leader, DownPeers: g.s.downPeers(r)}
}

// GetRegion looks the memcomparable-encoded key up.
func (g *grpcService) GetRegion(_ context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	return g.regionResponse(g.s.cluster.LocateEncoded(req.GetRegionKey())), nil
}

func (g *grpcService) GetPrevRegion(_ context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	return g.regionResponse(g.s.cluster.PrevRegion(req.GetRegionKey())), nil
}

func (g *grpcService) GetRegionByID(_ context.Context, req *pdpb.GetRegionByIDRequest) (*pdpb.GetRegionResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	r, err := g.s.cluster.RegionByID(req.GetRegionId())
	if err != nil {
		return g.regionResponse(nil), nil
	}
	return g.regionResponse(r), nil
}

// ScanRegions fills both the deprecated RegionMetas/Leaders and Regions.
func (g *grpcService) ScanRegions(_ context.Context, req *pdpb.ScanRegionsRequest) (*pdpb.ScanRegionsResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	g.s.scans.Add(1)
	rs := g.s.cluster.ScanRegions(req.GetStartKey(), req.GetEndKey(), int(max(req.GetLimit(), 0)))
	if len(rs) == 0 {
		return &pdpb.ScanRegionsResponse{Header: g.errorHeader(pdpb.ErrorType_REGION_NOT_FOUND, "region not found")}, nil
	}
	resp := &pdpb.ScanRegionsResponse{Header: g.header()}
	for _, r := range rs {
		pr := g.pbRegion(r)
		resp.RegionMetas = append(resp.RegionMetas, pr.Region)
		resp.Leaders = append(resp.Leaders, pr.Leader)
		resp.Regions = append(resp.Regions, pr)
	}
	return resp, nil
}

// BatchScanRegions scans sorted, non-overlapping ranges, returning each
// region once and at most limit regions (0 = no limit). With
// contain_all_key_range, a hole in the returned regions is an error.
func (g *grpcService) BatchScanRegions(_ context.Context, req *pdpb.BatchScanRegionsRequest) (*pdpb.BatchScanRegionsResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	g.s.scans.Add(1)
	ranges := req.GetRanges()
	for i, kr := range ranges {
		if i > 0 && bytes.Compare(kr.GetStartKey(), ranges[i-1].GetEndKey()) < 0 {
			return &pdpb.BatchScanRegionsResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "invalid key range, ranges overlapped")}, nil
		}
		if len(kr.GetEndKey()) > 0 && bytes.Compare(kr.GetStartKey(), kr.GetEndKey()) > 0 {
			return &pdpb.BatchScanRegionsResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "invalid key range, start key > end key")}, nil
		}
	}
	limit := int(max(req.GetLimit(), 0))
	var out []*cluster.Region
	seen := map[uint64]bool{}
scan:
	for _, kr := range ranges {
		rs := g.s.cluster.ScanRegions(kr.GetStartKey(), kr.GetEndKey(), 0)
		if req.GetContainAllKeyRange() {
			if err := checkCovers(rs, kr.GetStartKey(), kr.GetEndKey()); err != nil {
				return &pdpb.BatchScanRegionsResponse{Header: g.errorHeader(pdpb.ErrorType_REGIONS_NOT_CONTAIN_ALL_KEY_RANGE, "%v", err)}, nil
			}
		}
		for _, r := range rs {
			if seen[r.ID] {
				continue
			}
			seen[r.ID] = true
			out = append(out, r)
			if limit > 0 && len(out) >= limit {
				break scan
			}
		}
	}
	if len(out) == 0 {
		return &pdpb.BatchScanRegionsResponse{Header: g.errorHeader(pdpb.ErrorType_REGION_NOT_FOUND, "region not found")}, nil
	}
	resp := &pdpb.BatchScanRegionsResponse{Header: g.header()}
	for _, r := range out {
		resp.Regions = append(resp.Regions, g.pbRegion(r))
	}
	return resp, nil
}

// checkCovers reports a hole when the sorted regions do not tile [start, end).
func checkCovers(rs []*cluster.Region, start, end []byte) error {
	if len(rs) == 0 {
		return fmt.Errorf("no region covers [%x, %x)", start, end)
	}
	if bytes.Compare(rs[0].StartKey, start) > 0 {
		return fmt.Errorf("hole before region %d at %x", rs[0].ID, start)
	}
	for i := 1; i < len(rs); i++ {
		if !bytes.Equal(rs[i-1].EndKey, rs[i].StartKey) {
			return fmt.Errorf("regions %d and %d are not adjacent", rs[i-1].ID, rs[i].ID)
		}
	}
	last := rs[len(rs)-1]
	if len(last.EndKey) > 0 && (len(end) == 0 || bytes.Compare(last.EndKey, end) < 0) {
		return fmt.Errorf("hole after region %d at %x", last.ID, last.EndKey)
	}
	return nil
}

func (g *grpcService) GetGCSafePoint(ctx context.Context, req *pdpb.GetGCSafePointRequest) (*pdpb.GetGCSafePointResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	sp, err := g.s.loadGCSafePoint(ctx)
	if err != nil {
		return &pdpb.GetGCSafePointResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.GetGCSafePointResponse{Header: g.header(), SafePoint: sp}, nil
}

// UpdateGCSafePoint only moves the GC safepoint forward and returns the
// resulting value (BR reads it by sending 0).
func (g *grpcService) UpdateGCSafePoint(ctx context.Context, req *pdpb.UpdateGCSafePointRequest) (*pdpb.UpdateGCSafePointResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	s := g.s
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	cur, err := s.loadGCSafePoint(ctx)
	if err == nil && req.GetSafePoint() > cur {
		if err = s.saveGCSafePoint(ctx, req.GetSafePoint()); err == nil {
			cur = req.GetSafePoint()
		}
	}
	if err != nil {
		return &pdpb.UpdateGCSafePointResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.UpdateGCSafePointResponse{Header: g.header(), NewSafePoint: cur}, nil
}

func (g *grpcService) UpdateServiceGCSafePoint(ctx context.Context, req *pdpb.UpdateServiceGCSafePointRequest) (*pdpb.UpdateServiceGCSafePointResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	min, _, err := g.s.updateServiceSafePoint(ctx, string(req.GetServiceId()), req.GetTTL(), req.GetSafePoint())
	if err != nil {
		return &pdpb.UpdateServiceGCSafePointResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.UpdateServiceGCSafePointResponse{
		Header:       g.header(),
		ServiceId:    []byte(min.ServiceID),
		TTL:          min.ttlAt(g.s.wallNow()),
		MinSafePoint: min.SafePoint,
	}, nil
}

func barrierInfo(p *serviceSafePoint, now time.Time) *pdpb.GCBarrierInfo {
	if p == nil {
		return nil
	}
	return &pdpb.GCBarrierInfo{BarrierId: p.ServiceID, BarrierTs: p.SafePoint, TtlSeconds: p.ttlAt(now)}
}

// GetGCState reports the GC safepoint as both txn and GC safepoint, and the
// live service safepoints other than gc_worker as barriers. client-go polls
// it to reject reads below the txn safepoint.
func (g *grpcService) GetGCState(ctx context.Context, req *pdpb.GetGCStateRequest) (*pdpb.GetGCStateResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	sp, err := g.s.loadGCSafePoint(ctx)
	var all map[string]*serviceSafePoint
	if err == nil {
		all, err = g.s.loadServiceSafePoints(ctx)
	}
	if err != nil {
		return &pdpb.GetGCStateResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	now := g.s.wallNow()
	st := &pdpb.GCState{KeyspaceScope: req.GetKeyspaceScope(), TxnSafePoint: sp, GcSafePoint: sp}
	for id, p := range all {
		if id != GCWorkerServiceID && !p.expired(now) {
			st.GcBarriers = append(st.GcBarriers, barrierInfo(p, now))
		}
	}
	return &pdpb.GetGCStateResponse{Header: g.header(), GcState: st}, nil
}

func (g *grpcService) SetGCBarrier(ctx context.Context, req *pdpb.SetGCBarrierRequest) (*pdpb.SetGCBarrierResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	p, err := g.s.setGCBarrier(ctx, req.GetBarrierId(), req.GetBarrierTs(), req.GetTtlSeconds())
	if err != nil {
		return &pdpb.SetGCBarrierResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.SetGCBarrierResponse{Header: g.header(), NewBarrierInfo: barrierInfo(p, g.s.wallNow())}, nil
}

func (g *grpcService) DeleteGCBarrier(ctx context.Context, req *pdpb.DeleteGCBarrierRequest) (*pdpb.DeleteGCBarrierResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	p, err := g.s.deleteGCBarrier(ctx, req.GetBarrierId())
	if err != nil {
		return &pdpb.DeleteGCBarrierResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.DeleteGCBarrierResponse{Header: g.header(), DeletedBarrierInfo: barrierInfo(p, g.s.wallNow())}, nil
}
