package pd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
)

// What a volume-snapshot backup and restore (BR's EBS backup) needs of PD:
//
//	GET    /pd/api/v1/admin/cluster/markers/snapshot-recovering  {"marked": bool}
//	POST   /pd/api/v1/admin/cluster/markers/snapshot-recovering  mark ("" 200)
//	DELETE /pd/api/v1/admin/cluster/markers/snapshot-recovering  unmark ("" 200)
//	POST   /pd/api/v1/admin/base-alloc-id   {"id": "<decimal>"}: only while marked
//	                                        (403), never below the current id (500)
//	POST   /pd/api/v1/admin/reset-ts        {"tso": "<decimal>"}: the next TSO is
//	                                        above it; a ts below the current one is
//	                                        refused (403)
//	GET    /pd/api/v1/min-resolved-ts       {"is_real_time": true, "min_resolved_ts": ts,
//	                                        "persist_interval": "1s"}
//
// and pdpb IsSnapshotRecovering / ReportMinResolvedTS. Shapes follow
// tikv/pd server/api/admin.go (markSnapshotRecovering, isSnapshotRecovering,
// unmarkSnapshotRecovering, recoverAllocID: body {"id": "123"}, 403 "can
// only recover alloc id when recovering mark marked"), server/api/
// min_resolved_ts.go (minResolvedTS: is_real_time, min_resolved_ts,
// persist_interval as a duration string) and server/api/admin.go
// resetTS. The marker is kept in etcd at
// <root>/cluster/markers/snapshot-recovering, as PD's
// pkg/storage/endpoint keeps it, so RestartPD keeps it.

// minResolvedTSPersistInterval is PD's
// pd-server.min-resolved-ts-persistence-interval default.
const minResolvedTSPersistInterval = time.Second

func (s *Server) markerKey() string { return s.root + "/cluster/markers/snapshot-recovering" }

// SnapshotRecovering reports whether the snapshot-recovering marker is set.
func (s *Server) SnapshotRecovering(ctx context.Context) (bool, error) {
	resp, err := s.cli.Get(ctx, s.markerKey())
	if err != nil {
		return false, fmt.Errorf("read snapshot-recovering marker: %w", err)
	}
	return len(resp.Kvs) > 0, nil
}

// MarkSnapshotRecovering sets the marker.
func (s *Server) MarkSnapshotRecovering(ctx context.Context) error {
	if _, err := s.cli.Put(ctx, s.markerKey(), "on"); err != nil {
		return fmt.Errorf("mark snapshot recovering: %w", err)
	}
	s.log.Info("snapshot-recovering marker set")
	return nil
}

// UnmarkSnapshotRecovering deletes the marker.
func (s *Server) UnmarkSnapshotRecovering(ctx context.Context) error {
	if _, err := s.cli.Delete(ctx, s.markerKey()); err != nil {
		return fmt.Errorf("unmark snapshot recovering: %w", err)
	}
	s.log.Info("snapshot-recovering marker deleted")
	return nil
}

// minResolved is PD's store-level min resolved ts book (in memory; real
// PD persists only the cluster-level value, every persist interval).
type minResolved struct {
	mu      sync.Mutex
	stores  map[uint64]uint64
	cluster uint64 // never moves back
}

// ReportMinResolvedTS records a store's min resolved ts (pdpb
// ReportMinResolvedTS). A value below the store's previous one is ignored,
// as PD keeps the store's maximum.
func (s *Server) ReportMinResolvedTS(storeID, ts uint64) {
	s.minRes.mu.Lock()
	defer s.minRes.mu.Unlock()
	if s.minRes.stores == nil {
		s.minRes.stores = map[uint64]uint64{}
	}
	if ts > s.minRes.stores[storeID] {
		s.minRes.stores[storeID] = ts
	}
}

// MinResolvedTS returns the cluster's min resolved ts: the minimum over the
// stores that are up of what each reported, 0 while one of them has not
// reported (PD's RaftCluster.GetMinResolvedTS skips nothing either), and
// never below a value returned before.
func (s *Server) MinResolvedTS() uint64 {
	s.minRes.mu.Lock()
	defer s.minRes.mu.Unlock()
	var m uint64
	first := true
	for _, st := range s.cluster.Stores() {
		if !st.Up {
			continue
		}
		ts := s.minRes.stores[st.ID]
		if first || ts < m {
			m, first = ts, false
		}
	}
	if m > s.minRes.cluster {
		s.minRes.cluster = m
	}
	return s.minRes.cluster
}

func (g *grpcService) IsSnapshotRecovering(ctx context.Context, req *pdpb.IsSnapshotRecoveringRequest) (*pdpb.IsSnapshotRecoveringResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	marked, err := g.s.SnapshotRecovering(ctx)
	if err != nil {
		return &pdpb.IsSnapshotRecoveringResponse{Header: g.errorHeader(pdpb.ErrorType_UNKNOWN, "%v", err)}, nil
	}
	return &pdpb.IsSnapshotRecoveringResponse{Header: g.header(), Marked: marked}, nil
}

func (g *grpcService) ReportMinResolvedTS(_ context.Context, req *pdpb.ReportMinResolvedTsRequest) (*pdpb.ReportMinResolvedTsResponse, error) {
	if err := g.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	g.s.ReportMinResolvedTS(req.GetStoreId(), req.GetMinResolvedTs())
	return &pdpb.ReportMinResolvedTsResponse{Header: g.header()}, nil
}

// errIDBelowCurrent is PD's refusal of a base id below the allocator's.
var errIDBelowCurrent = errors.New("new base id is smaller than the current id")

func (s *Server) recoveryRoutes(mux *http.ServeMux) {
	const marker = APIPrefix + "admin/cluster/markers/snapshot-recovering"
	mux.HandleFunc("GET "+marker, func(w http.ResponseWriter, r *http.Request) {
		marked, err := s.SnapshotRecovering(r.Context())
		if err != nil {
			writeText(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Marked bool `json:"marked"`
		}{marked})
	})
	mux.HandleFunc("POST "+marker, func(w http.ResponseWriter, r *http.Request) {
		if err := s.MarkSnapshotRecovering(r.Context()); err != nil {
			writeText(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeText(w, http.StatusOK, "")
	})
	mux.HandleFunc("DELETE "+marker, func(w http.ResponseWriter, r *http.Request) {
		if err := s.UnmarkSnapshotRecovering(r.Context()); err != nil {
			writeText(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeText(w, http.StatusOK, "")
	})
	mux.HandleFunc("POST "+APIPrefix+"admin/base-alloc-id", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if !readJSON(w, r, &in) {
			return
		}
		v, ok := in["id"].(string)
		if !ok || v == "" {
			writeText(w, http.StatusBadRequest, "invalid id value")
			return
		}
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeText(w, http.StatusBadRequest, err.Error())
			return
		}
		marked, err := s.SnapshotRecovering(r.Context())
		if err != nil {
			writeText(w, http.StatusInternalServerError, err.Error())
			return
		}
		if !marked {
			writeText(w, http.StatusForbidden, "can only recover alloc id when recovering mark marked")
			return
		}
		if err := s.cluster.SetBaseID(id); err != nil {
			writeText(w, http.StatusInternalServerError, fmt.Sprintf("%v: %v", errIDBelowCurrent, err))
			return
		}
		s.log.Info("base alloc id set", "id", id)
		writeText(w, http.StatusOK, "")
	})
	mux.HandleFunc("POST "+APIPrefix+"admin/reset-ts", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if !readJSON(w, r, &in) {
			return
		}
		v, ok := in["tso"].(string)
		if !ok {
			writeText(w, http.StatusBadRequest, "invalid tso value")
			return
		}
		ts, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeText(w, http.StatusBadRequest, "invalid tso value")
			return
		}
		if err := s.tso.resetTo(r.Context(), ts); err != nil {
			writeText(w, http.StatusForbidden, err.Error())
			return
		}
		writeText(w, http.StatusOK, "Reset ts successfully.")
	})
	mux.HandleFunc("GET "+APIPrefix+"min-resolved-ts", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			IsRealTime      bool   `json:"is_real_time,omitempty"`
			MinResolvedTS   uint64 `json:"min_resolved_ts"`
			PersistInterval string `json:"persist_interval,omitempty"`
		}{true, s.MinResolvedTS(), minResolvedTSPersistInterval.String()})
	})
}

// writeText answers as PD's render.Text does.
func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg))
}
