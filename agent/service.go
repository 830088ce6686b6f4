package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protobuf "google.golang.org/protobuf/proto"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// service is the Agent gRPC service the coordinator polls.
type service struct {
	pitrpb.UnimplementedAgentServer
	a *Agent
}

var _ pitrpb.AgentServer = (*service)(nil)

func rpcErr(err error) error {
	switch {
	case errors.Is(err, errNoTask):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, errNotReady):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// GetProgress reports, for every region of the task led by this store, its
// flushed checkpoint (storage holds every change committed at or before it
// in the region's range), the oldest pending prewrite and why it is behind.
// An empty task name means the only running task.
func (s *service) GetProgress(ctx context.Context, req *pitrpb.GetProgressRequest) (*pitrpb.GetProgressResponse, error) {
	r, err := s.a.runner(req.GetTask())
	if err != nil {
		return nil, rpcErr(err)
	}
	c, err := r.current()
	if err != nil {
		return nil, rpcErr(err)
	}
	if req.GetRescan() {
		c.kickRegions() // the coordinator sees holes: a leader may have come here
	}
	return &pitrpb.GetProgressResponse{StoreId: s.a.storeID, Task: r.name, Regions: c.progress()}, nil
}

// FlushNow cuts a flush now and returns its flush ts once its meta is
// stored. An empty task name flushes every running task (the largest flush
// ts and the total file count are returned).
func (s *service) FlushNow(ctx context.Context, req *pitrpb.FlushNowRequest) (*pitrpb.FlushNowResponse, error) {
	var runners []*runner
	if req.GetTask() == "" {
		runners = s.a.runners()
	} else {
		r, err := s.a.runner(req.GetTask())
		if err != nil {
			return nil, rpcErr(err)
		}
		runners = []*runner{r}
	}
	resp := &pitrpb.FlushNowResponse{}
	for _, r := range runners {
		meta, err := r.flushNow(ctx)
		if err != nil {
			return nil, rpcErr(fmt.Errorf("task %s: %w", r.name, err))
		}
		resp.FlushTs = max(resp.FlushTs, meta.GetFlushTs())
		resp.Files += int64(len(meta.GetFiles()))
	}
	return resp, nil
}

// Status reports the agent's store, tasks and buffers.
func (s *service) Status(ctx context.Context, _ *pitrpb.StatusRequest) (*pitrpb.StatusResponse, error) {
	resp := &pitrpb.StatusResponse{StoreId: s.a.storeID, Version: Version}
	for _, r := range s.a.runners() {
		resp.Tasks = append(resp.Tasks, r.name)
	}
	resp.BufferedBytes, resp.SpilledBytes = s.a.bufferStats()
	s.a.mu.Lock()
	resp.LastError = s.a.lastErr
	s.a.mu.Unlock()
	resp.UploadRateLimit = s.a.UploadRateLimit()
	return resp, nil
}

// agentConfig is the agent's online config (GET and POST /config), in
// the style of TiKV's status API: POST takes the keys to change.
type agentConfig struct {
	UploadRateLimit *int64 `json:"upload-rate-limit"`
}

// httpHandler serves /metrics, /healthz and /config.
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		n := a.UploadRateLimit()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(agentConfig{UploadRateLimit: &n})
	})
	mux.HandleFunc("POST /config", func(w http.ResponseWriter, r *http.Request) {
		var c agentConfig
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			http.Error(w, "config: "+err.Error(), http.StatusBadRequest)
			return
		}
		if c.UploadRateLimit != nil {
			if err := a.SetUploadRateLimit(*c.UploadRateLimit); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if problems := a.Healthy(); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(problems, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Healthy returns what is wrong: PD, etcd, or a task's change stream. Empty
// means healthy.
func (a *Agent) Healthy() []string {
	var out []string
	a.health.mu.Lock()
	if a.health.pdErr != "" {
		out = append(out, a.health.pdErr)
	}
	if a.health.etcdErr != "" {
		out = append(out, "etcd: "+a.health.etcdErr)
	}
	a.health.mu.Unlock()
	for _, r := range a.runners() {
		c, err := r.current()
		if err != nil {
			out = append(out, "task "+r.name+": "+err.Error())
			continue
		}
		if e := c.streamErr(); e != "" {
			out = append(out, "task "+r.name+": "+e)
		}
	}
	return out
}

// regionCounts sums the regions of every task.
func (a *Agent) regionCounts() (subscribed, initialized int) {
	for _, r := range a.runners() {
		if c, err := r.current(); err == nil {
			s, i := c.counts()
			subscribed += s
			initialized += i
		}
	}
	return subscribed, initialized
}

// bufferStats sums the flushers' buffered and spilled bytes.
func (a *Agent) bufferStats() (buffered, spilled int64) {
	for _, r := range a.runners() {
		if c, err := r.current(); err == nil {
			st := c.fl.Stats()
			buffered += st.Buffered
			spilled += st.Spilled
		}
	}
	return buffered, spilled
}

func (a *Agent) maxLag() float64 {
	var worst float64
	for _, r := range a.runners() {
		worst = max(worst, r.lag())
	}
	return worst
}

func encodeAgentRecord(rec *pitrpb.AgentRecord) (string, error) {
	b, err := protobuf.Marshal(rec)
	if err != nil {
		return "", fmt.Errorf("encode agent record: %w", err)
	}
	return string(b), nil
}
