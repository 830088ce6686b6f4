package pd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pitr-io/pitr/playground/cluster"
)

// APIPrefix is where PD serves its HTTP API, on the same client URL as gRPC
// and etcd (PD hands its handlers to embedded etcd as UserHandlers, and
// etcd multiplexes HTTP/1 and gRPC on the port).
const APIPrefix = "/pd/api/v1/"

// errSchedulerNotFound is PD's errs.ErrSchedulerNotFound as its API prints it.
var errSchedulerNotFound = errors.New("[PD:scheduler:ErrSchedulerNotFound]scheduler not found")

// The part of PD's HTTP API that BR and Lightning use to keep PD from
// moving regions under an import (pingcap/tidb br/pkg/pdutil/pd.go):
//
//	GET  /pd/api/v1/version                 {"version": "v8.5.0"}
//	GET  /pd/api/v1/config/cluster-version  "8.5.0"
//	GET  /pd/api/v1/schedulers[?status=paused]       ["balance-leader-scheduler", ...]
//	POST /pd/api/v1/schedulers/{name}       {"delay": seconds}: pause; 0 resumes
//	GET  /pd/api/v1/config/schedule         the stored schedule config (no TTL overrides)
//	POST /pd/api/v1/config/schedule         {"key": value}: set permanently
//	POST /pd/api/v1/config[?ttlSecond=n]    {"schedule.key": value}: with ttlSecond a
//	                                        temporary override for n seconds (0 deletes
//	                                        it), else permanent
//
// Answers follow tikv/pd server/api/scheduler.go and config.go: JSON strings
// for messages, 400 for a bad body, 500 for an unknown scheduler.
func (s *Server) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+APIPrefix+"version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": "v" + cluster.StoreVersion})
	})
	mux.HandleFunc("GET "+APIPrefix+"config/cluster-version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, cluster.StoreVersion)
	})
	mux.HandleFunc("GET "+APIPrefix+"schedulers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.sched.schedulers(r.URL.Query().Get("status"), s.wallNow()))
	})
	mux.HandleFunc("POST "+APIPrefix+"schedulers/{name}", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]int64
		if !readJSON(w, r, &in) {
			return
		}
		delay, ok := in["delay"]
		if !ok {
			writeJSON(w, http.StatusBadRequest, "missing pause time")
			return
		}
		name := r.PathValue("name")
		s.opMu.Lock()
		err := s.sched.pause(name, delay, s.wallNow())
		s.opMu.Unlock()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, err.Error())
			return
		}
		s.log.Info("scheduler pause", "name", name, "delay_s", delay)
		writeJSON(w, http.StatusOK, "Pause or resume the scheduler successfully.")
	})
	mux.HandleFunc("GET "+APIPrefix+"config/schedule", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.sched.snapshot())
	})
	mux.HandleFunc("POST "+APIPrefix+"config/schedule", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if !readJSON(w, r, &in) {
			return
		}
		if err := s.sched.set(in); err != nil {
			writeJSON(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, "The config is updated.")
	})
	mux.HandleFunc("POST "+APIPrefix+"config", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if !readJSON(w, r, &in) {
			return
		}
		if ttlStr := r.URL.Query().Get("ttlSecond"); ttlStr != "" {
			ttl, err := strconv.Atoi(ttlStr)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, err.Error())
				return
			}
			s.opMu.Lock()
			err = s.sched.setTTL(in, time.Duration(ttl)*time.Second, s.wallNow())
			s.opMu.Unlock()
			if err != nil {
				writeJSON(w, http.StatusBadRequest, err.Error())
				return
			}
			s.log.Info("ttl config", "ttl_s", ttl, "values", in)
			if ttl == 0 {
				writeJSON(w, http.StatusOK, "The ttl config is deleted.")
			} else {
				writeJSON(w, http.StatusOK, "The ttl config is updated.")
			}
			return
		}
		plain := map[string]any{}
		for k, v := range in {
			plain[strings.TrimPrefix(k, "schedule.")] = v
		}
		if err := s.sched.set(plain); err != nil {
			writeJSON(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, "The config is updated.")
	})
	s.recoveryRoutes(mux)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(strconv.Quote(err.Error()))
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// readJSON decodes the body, answering 400 as PD's ReadJSONRespondError
// does when it is not valid JSON of the expected shape.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, fmt.Sprintf("bad request body: %v", err))
		return false
	}
	return true
}
