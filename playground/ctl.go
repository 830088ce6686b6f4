package playground

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/pitr-io/pitr/playground/cluster"
)

// The control API (DESIGN.md §7), HTTP JSON:
//
//	GET  /regions                      -> [RegionInfo]
//	GET  /stores                       -> [StoreInfo]
//	POST /split {"key": base64}        -> [RegionInfo] (the two halves)
//	POST /transfer-leader {"region_id": N, "store_id": N}
//	POST /merge {"left": N, "right": N} (right is merged into left)
//	POST /move-peer {"region_id": N, "from_store": N, "to_store": N}
//	POST /pd/restart                   (regions lose their leaders in PD for a while)
//	POST /stores/{id}/stop
//	POST /stores/{id}/start
//	POST /gc                           -> {"safepoint": N}
//	GET  /volumes                      -> the volume file (volumes.go), 404 without Dir
//	POST /start-stores {"volumes_file": F} start the deferred stores from BR's
//	                                   restore volume file (recovery.go); 409
//	                                   when PD is not marked snapshot-recovering
//	GET  /healthz
//
// Errors are {"error": "..."} with 400 (bad request), 404 (no such region or
// store), 409 (conflicting state) or 500.

// RegionInfo is a region as the control API shows it. Keys are raw user keys
// (JSON base64); a nil end key means +inf.
type RegionInfo struct {
	ID           uint64   `json:"id"`
	StartKey     []byte   `json:"start_key"`
	EndKey       []byte   `json:"end_key"`
	EpochVersion uint64   `json:"epoch_version"`
	EpochConfVer uint64   `json:"epoch_conf_ver"`
	Leader       uint64   `json:"leader_store"`
	Stores       []uint64 `json:"stores"`
}

// StoreInfo is a store as the control API shows it.
type StoreInfo struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	Up   bool   `json:"up"`
}

func regionInfo(r *cluster.Region) RegionInfo {
	start, end := r.RawRange()
	ri := RegionInfo{ID: r.ID, StartKey: start, EndKey: end, EpochVersion: r.Epoch.Version, EpochConfVer: r.Epoch.ConfVer, Leader: r.Leader}
	for _, p := range r.Peers {
		ri.Stores = append(ri.Stores, p.StoreId)
	}
	return ri
}

func (p *Playground) startCtl(addr string) error {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("control api: %w", err)
	}
	p.ctlLn = ln
	p.ctl = &http.Server{Handler: p.ctlHandler()}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.ctl.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("control api stopped", "error", err)
		}
	}()
	return nil
}

func (p *Playground) ctlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /regions", func(w http.ResponseWriter, _ *http.Request) {
		out := []RegionInfo{}
		for _, r := range p.Cluster.Regions() {
			out = append(out, regionInfo(r))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /stores", func(w http.ResponseWriter, _ *http.Request) {
		out := []StoreInfo{}
		for _, s := range p.Cluster.Stores() {
			out = append(out, StoreInfo{ID: s.ID, Addr: s.Addr, Up: s.Up})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /split", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Key []byte `json:"key"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		rs, err := p.Cluster.Split(req.Key)
		if err != nil {
			writeErr(w, err)
			return
		}
		out := []RegionInfo{}
		for _, r := range rs {
			out = append(out, regionInfo(r))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /transfer-leader", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			RegionID uint64 `json:"region_id"`
			StoreID  uint64 `json:"store_id"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if err := p.Cluster.TransferLeader(req.RegionID, req.StoreID); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /merge", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Left  uint64 `json:"left"`
			Right uint64 `json:"right"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		m, err := p.Cluster.Merge(req.Right, req.Left)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, regionInfo(m))
	})
	mux.HandleFunc("POST /move-peer", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			RegionID  uint64 `json:"region_id"`
			FromStore uint64 `json:"from_store"`
			ToStore   uint64 `json:"to_store"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if err := p.Cluster.MovePeer(req.RegionID, req.FromStore, req.ToStore); err != nil {
			writeErr(w, err)
			return
		}
		reg, err := p.Cluster.RegionByID(req.RegionID)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, regionInfo(reg))
	})
	mux.HandleFunc("POST /pd/restart", func(w http.ResponseWriter, r *http.Request) {
		if err := p.RestartPD(r.Context()); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /stores/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "store id must be a number"})
			return
		}
		switch r.PathValue("action") {
		case "stop":
			err = p.StopStore(id)
		case "start":
			err = p.StartStore(id)
		default:
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown action " + r.PathValue("action")})
			return
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /gc", func(w http.ResponseWriter, r *http.Request) {
		sp, err := p.RunGC(r.Context())
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]uint64{"safepoint": sp})
	})
	mux.HandleFunc("GET /volumes", func(w http.ResponseWriter, _ *http.Request) {
		if p.cfg.Dir == "" {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "the playground has no dir, so no volumes"})
			return
		}
		f, err := p.Volumes()
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, f)
	})
	mux.HandleFunc("POST /start-stores", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			VolumesFile string `json:"volumes_file"`
		}
		if !readJSON(w, r, &in) {
			return
		}
		if in.VolumesFile == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "volumes_file is required"})
			return
		}
		if err := p.StartStoresFromVolumes(r.Context(), in.VolumesFile); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request body: " + err.Error()})
		return false
	}
	return true
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, cluster.ErrRegionNotFound), errors.Is(err, cluster.ErrStoreNotFound):
		code = http.StatusNotFound
	case errors.Is(err, cluster.ErrBadSplitKey), errors.Is(err, cluster.ErrNotAdjacent), errors.Is(err, cluster.ErrBadPeerMove):
		code = http.StatusBadRequest
	case errors.Is(err, cluster.ErrStoreDown), errors.Is(err, ErrStoreRunning), errors.Is(err, ErrStoreStopped), errors.Is(err, ErrNotRecovering):
		code = http.StatusConflict
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
