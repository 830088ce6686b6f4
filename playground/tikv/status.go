package tikv

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// The status server is a store's HTTP API on its own port, TiKV's
// status_address (src/server/status_server/mod.rs). The playground serves
// the part pitr uses, online config change:
//
//	GET  /status -> 200
//	GET  /config -> the current config as nested JSON: {"gc": {"ratio-threshold": 1.1, ...}}
//	POST /config {"gc.ratio-threshold": "-1"} -> 200, empty body
//
// As in TiKV (decode_json there), the POST body is one flat JSON object of
// dotted names; each value may be a string, a number or a bool and is read
// as its text; an array, a nested object or null is "wrong format". A body
// that does not decode, an unknown name, a value of the wrong type or an
// item that cannot change online answers 500 with the reason as text, and
// changes nothing (TiKV validates the whole change before it applies any).
//
// Only the gc section is known to the playground. The values live in
// memory: a store with no config file starts with the defaults every time,
// so a restart resets an online change (in TiKV the change is also written
// to the config file when there is one, but deployments that regenerate the
// file, e.g. tidb-operator, lose it the same way: tidb-operator#6267).
type statusServer struct {
	srv *http.Server
	ln  net.Listener
	wg  sync.WaitGroup

	mu sync.Mutex
	gc gcConfig
}

// gcConfig is TiKV's [gc] section (src/server/gc_worker/config.rs) with
// its defaults.
type gcConfig struct {
	RatioThreshold                   jsonFloat `json:"ratio-threshold"`
	BatchKeys                        uint64    `json:"batch-keys"`
	MaxWriteBytesPerSec              string    `json:"max-write-bytes-per-sec"`
	EnableCompactionFilter           bool      `json:"enable-compaction-filter"`
	CompactionFilterSkipVersionCheck bool      `json:"compaction-filter-skip-version-check"`
	NumThreads                       uint64    `json:"num-threads"`
}

// DefaultGCRatioThreshold is TiKV's default gc.ratio-threshold.
const DefaultGCRatioThreshold = 1.1

func defaultGCConfig() gcConfig {
	return gcConfig{RatioThreshold: DefaultGCRatioThreshold, BatchKeys: 512, MaxWriteBytesPerSec: "0KiB",
		EnableCompactionFilter: true, NumThreads: 1}
}

// startStatus serves the status API on addr, with TLS when tlsCfg is set
// (HTTPS only, as TiKV's status server then accepts no plain HTTP).
func startStatus(addr string, tlsCfg *tls.Config, log hclog.Logger) (*statusServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if tlsCfg != nil {
		// The TCP listener's address is kept by the TLS listener's Addr.
		ln = tls.NewListener(ln, tlsCfg)
	}
	s := &statusServer{ln: ln, gc: defaultGCConfig()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /config", s.getConfig)
	mux.HandleFunc("POST /config", s.postConfig)
	// Failed handshakes (a plaintext or certificate-less client) are the
	// client's problem: log them at debug, not on stderr.
	s.srv = &http.Server{Handler: mux, ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(ln) // returns on Close
	}()
	return s, nil
}

func (s *statusServer) addr() string { return s.ln.Addr().String() }

// close stops the server hard, as a killed process would.
func (s *statusServer) close() {
	_ = s.srv.Close()
	s.wg.Wait()
}

func (s *statusServer) ratioThreshold() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.gc.RatioThreshold)
}

// jsonFloat is a float64 that encodes ±inf and NaN as null, as serde_json
// does (encoding/json refuses them).
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	if math.IsInf(float64(f), 0) || math.IsNaN(float64(f)) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

func (s *statusServer) getConfig(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	b, err := json.Marshal(map[string]any{"gc": s.gc})
	s.mu.Unlock()
	if err != nil {
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (s *statusServer) postConfig(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	change, err := decodeChange(body)
	if err != nil {
		http.Error(w, fmt.Sprintf("failed to decode, error: %v", err), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := applyChange(s.gc, change)
	if err != nil {
		http.Error(w, fmt.Sprintf("failed to update, error: %v", err), http.StatusInternalServerError)
		return
	}
	s.gc = next
	w.WriteHeader(http.StatusOK)
}

// decodeChange reads a flat JSON object of name -> value, each value as its
// text, as TiKV's decode_json does.
func decodeChange(body []byte) (map[string]string, error) {
	var raw any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	obj, ok := raw.(map[string]any)
	if !ok {
		return nil, errors.New("wrong format")
	}
	out := map[string]string{}
	for k, v := range obj {
		switch v := v.(type) {
		case bool:
			out[k] = strconv.FormatBool(v)
		case json.Number:
			out[k] = v.String()
		case string:
			out[k] = v
		case []any:
			return nil, errors.New("array type are not supported")
		default:
			return nil, errors.New("wrong format")
		}
	}
	return out, nil
}

// applyChange returns cfg with change applied, or the first bad item (in
// name order, so the message is stable).
func applyChange(cfg gcConfig, change map[string]string) (gcConfig, error) {
	names := make([]string, 0, len(change))
	for k := range change {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		v := change[name]
		var err error
		switch name {
		case "gc.ratio-threshold":
			var f float64
			f, err = strconv.ParseFloat(v, 64)
			cfg.RatioThreshold = jsonFloat(f)
		case "gc.batch-keys":
			cfg.BatchKeys, err = strconv.ParseUint(v, 10, 64)
			if err == nil && cfg.BatchKeys == 0 {
				err = errors.New("gc.batch_keys should not be 0")
			}
		case "gc.enable-compaction-filter":
			cfg.EnableCompactionFilter, err = strconv.ParseBool(v)
		case "gc.compaction-filter-skip-version-check":
			cfg.CompactionFilterSkipVersionCheck, err = strconv.ParseBool(v)
		case "gc.max-write-bytes-per-sec":
			cfg.MaxWriteBytesPerSec = v
		case "gc.num-threads":
			cfg.NumThreads, err = strconv.ParseUint(v, 10, 64)
		default:
			err = errors.New("unknown or not online-changeable config item")
		}
		if err != nil {
			return cfg, fmt.Errorf("%s = %q: %v", name, v, err)
		}
	}
	return cfg, nil
}

// GCEnabled reports whether a store's compaction-filter GC would run with
// this ratio threshold: TiKV's check_need_gc (src/server/gc_worker/
// compaction_filter.rs) disables GC directly when the threshold is
// negative or +inf. NaN disables it too (no ratio compares above it). The
// playground keeps no SST statistics, so any other value runs GC.
func GCEnabled(ratioThreshold float64) bool {
	return !(math.Signbit(ratioThreshold) || math.IsInf(ratioThreshold, 0) || math.IsNaN(ratioThreshold))
}
