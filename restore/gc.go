package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/opt"

	"github.com/pitr-io/pitr/connector"
)

// Restored versions all lie at or below T, normally far below the target's
// GC safepoint, and TiKV's compaction-filter GC removes a Delete that is the
// newest version below the safepoint together with everything older
// (tikv src/server/gc_worker/compaction_filter.rs). A Put ingested after
// that brings a deleted key back. Two defences, both kept:
//
//   - the write order (restore.go): a key's versions are never split across
//     chunks, and the passes of a sweep ingest commit-time windows in
//     ascending order, so any GC sees a prefix of each key's history;
//   - the GC hold here: before the first write, gc.ratio-threshold = -1 on
//     every TiKV of the target, through its status API (POST /config),
//     which disables the compaction filter's GC (check_need_gc: "Disable GC
//     directly once the config is negative or +inf"), as BR does during a
//     log restore (br/pkg/task/stream.go KeepGcDisabled).
//
// The hold is re-applied every GCHoldInterval, because a TiKV restart
// resets it (tidb-operator#6267), and it takes stores that join meanwhile.
// The values found are recorded in the progress file before the first
// change, and set back when the restore ends, whether it succeeded or not;
// a rerun of a restore that was killed sets them back too. A value already
// negative when first seen is taken as left over and set back to TiKV's
// default, as BR does.

// DefaultGCHoldInterval is how often the GC hold is re-applied.
const DefaultGCHoldInterval = 10 * time.Second

// defaultGCRatio is TiKV's default gc.ratio-threshold.
const defaultGCRatio = "1.1"

// gcDisabledRatio is the value that turns a TiKV's GC off (BR's "-1.0").
const gcDisabledRatio = "-1.0"

// storeLister lists the target's stores (pd.Client).
type storeLister interface {
	GetAllStores(ctx context.Context, opts ...opt.GetStoreOption) ([]*metapb.Store, error)
}

// gcHold keeps GC off on every TiKV of the target while a restore writes.
type gcHold struct {
	pd   storeLister
	prog *progress
	log  hclog.Logger
	tls  connector.TLS
	http *http.Client

	stop chan struct{}
	wg   sync.WaitGroup
}

func newGCHold(pd storeLister, prog *progress, log hclog.Logger, tls connector.TLS, hc *http.Client) *gcHold {
	return &gcHold{pd: pd, prog: prog, log: log.Named("gc-hold"), tls: tls, http: hc}
}

// tikvStores lists the TiKV stores of the target (not tombstones, not
// TiFlash, which has no TiKV GC).
func (h *gcHold) tikvStores(ctx context.Context) ([]*metapb.Store, error) {
	return tikvStores(ctx, h.pd)
}

// allStores lists every store of the target but tombstones, from PD, with
// pdRetry; a failure is ErrUnavailable.
func allStores(ctx context.Context, pd storeLister) ([]*metapb.Store, error) {
	stores, err := pdRetry(ctx, func() ([]*metapb.Store, error) {
		return pd.GetAllStores(ctx, opt.WithExcludeTombstone())
	})
	if err != nil {
		return nil, fmt.Errorf("%w: list the target's stores from PD: %v", ErrUnavailable, err)
	}
	return stores, nil
}

// tikvStores lists the target's TiKV stores, by id: not tombstones or
// removed nodes, not TiFlash (no TiKV GC, no import mode: BR skips it).
func tikvStores(ctx context.Context, pd storeLister) ([]*metapb.Store, error) {
	stores, err := allStores(ctx, pd)
	if err != nil {
		return nil, err
	}
	var out []*metapb.Store
	for _, s := range stores {
		if s.GetState() == metapb.StoreState_Tombstone || s.GetNodeState() == metapb.NodeState_Removed || isTiFlash(s) {
			continue
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out, nil
}

func isTiFlash(s *metapb.Store) bool {
	for _, l := range s.GetLabels() {
		if l.GetKey() == "engine" && strings.HasPrefix(l.GetValue(), "tiflash") {
			return true
		}
	}
	return false
}

// start turns GC off on every TiKV store. Any store it cannot reach, or
// that has no status address, is an ErrUnavailable refusal; the caller then
// sets back what was changed (restore). Then it re-applies the hold every
// interval until stopped.
func (h *gcHold) start(ctx context.Context, interval time.Duration) error {
	stores, err := h.tikvStores(ctx)
	if err != nil {
		return err
	}
	if len(stores) == 0 {
		return fmt.Errorf("%w: PD lists no TiKV store", ErrUnavailable)
	}
	for _, s := range stores {
		if s.GetStatusAddress() == "" {
			return fmt.Errorf("%w: store %d (%s) has no status address in PD; pitr turns GC off on every TiKV of the target through its status API before writing",
				ErrUnavailable, s.GetId(), s.GetAddress())
		}
	}
	for _, s := range stores {
		if err := h.hold(ctx, s); err != nil {
			return fmt.Errorf("%w: turn GC off on store %d before writing: %v", ErrUnavailable, s.GetId(), err)
		}
	}
	h.log.Info("gc.ratio-threshold set to "+gcDisabledRatio, "stores", len(stores))
	h.stop = make(chan struct{})
	h.wg.Add(1)
	go h.keep(ctx, interval)
	return nil
}

// hold records a store's value (once) and turns its GC off.
func (h *gcHold) hold(ctx context.Context, s *metapb.Store) error {
	if _, ok := h.prog.gcRatio(s.GetId()); !ok {
		old, err := h.get(ctx, s.GetStatusAddress())
		if err != nil {
			return err
		}
		if f, err := strconv.ParseFloat(old, 64); err != nil || math.Signbit(f) || math.IsInf(f, 0) || math.IsNaN(f) {
			h.log.Warn("gc.ratio-threshold already off before this restore; it will be set to TiKV's default when the restore ends",
				"store", s.GetId(), "value", old, "default", defaultGCRatio)
			old = defaultGCRatio
		}
		if err := h.prog.recordGCRatio(s.GetId(), old); err != nil {
			return err
		}
	}
	return h.set(ctx, s.GetStatusAddress(), gcDisabledRatio)
}

// keep re-applies the hold every interval: a restarted TiKV has its
// default again, and a store may have joined.
func (h *gcHold) keep(ctx context.Context, interval time.Duration) {
	defer h.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stores, err := h.tikvStores(ctx)
		if err != nil {
			h.log.Warn("re-apply GC hold: list stores", "error", err)
			continue
		}
		for _, s := range stores {
			if s.GetStatusAddress() == "" {
				h.log.Warn("re-apply GC hold: store has no status address", "store", s.GetId())
				continue
			}
			if err := h.hold(ctx, s); err != nil && ctx.Err() == nil {
				h.log.Warn("re-apply GC hold", "store", s.GetId(), "status_addr", s.GetStatusAddress(), "error", err)
			}
		}
	}
}

// halt stops re-applying the hold.
func (h *gcHold) halt() {
	if h.stop != nil {
		close(h.stop)
		h.wg.Wait()
		h.stop = nil
	}
}

// ErrGCNotRestored: the restore could not set gc.ratio-threshold back on
// some target stores; they keep GC off until it is set back (a rerun of
// the same restore command does that).
var ErrGCNotRestored = errors.New("target GC left disabled")

// restoreGC sets every recorded store back to its old value and forgets
// the ones that took it. It uses its own deadline, so it also runs after
// the restore's context is cancelled.
func restoreGC(ctx context.Context, pd storeLister, prog *progress, log hclog.Logger, tls connector.TLS, hc *http.Client) error {
	olds := prog.gcRatios()
	if len(olds) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	h := newGCHold(pd, prog, log, tls, hc)
	stores, err := h.tikvStores(ctx)
	if err != nil {
		return fmt.Errorf("%w: set gc.ratio-threshold back on stores %s: %v; rerun the same restore command to set it back",
			ErrGCNotRestored, storeIDs(olds), err)
	}
	byID := map[uint64]*metapb.Store{}
	for _, s := range stores {
		byID[s.GetId()] = s
	}
	var failed []string
	var done []uint64
	for _, id := range sortedIDs(olds) {
		s := byID[id]
		if s == nil { // gone (tombstone): nothing to set back
			done = append(done, id)
			continue
		}
		if err := h.set(ctx, s.GetStatusAddress(), olds[id]); err != nil {
			failed = append(failed, fmt.Sprintf("store %d (%s): %v", id, s.GetStatusAddress(), err))
			continue
		}
		done = append(done, id)
	}
	if err := prog.forgetGCRatios(done...); err != nil {
		failed = append(failed, err.Error())
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: set gc.ratio-threshold back: %s; rerun the same restore command to set it back",
			ErrGCNotRestored, strings.Join(failed, "; "))
	}
	log.Named("gc-hold").Info("gc.ratio-threshold set back", "stores", len(done))
	return nil
}

func sortedIDs(m map[uint64]string) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func storeIDs(m map[uint64]string) string {
	var s []string
	for _, id := range sortedIDs(m) {
		s = append(s, strconv.FormatUint(id, 10))
	}
	return strings.Join(s, ",")
}

func statusURL(t connector.TLS, addr string) string { return connector.URL(t, addr, "/config") }

// get reads gc.ratio-threshold from TiKV's GET /config, which returns the
// whole config as nested JSON ({"gc": {"ratio-threshold": 1.1}}); +inf
// and NaN come as null.
func (h *gcHold) get(ctx context.Context, addr string) (string, error) {
	var cfg struct {
		GC map[string]json.RawMessage `json:"gc"`
	}
	if err := CallJSON(ctx, h.http, http.MethodGet, statusURL(h.tls, addr), nil, &cfg); err != nil {
		return "", err
	}
	raw, ok := cfg.GC["ratio-threshold"]
	if !ok {
		return "", errors.New("GET /config: no gc.ratio-threshold")
	}
	if string(raw) == "null" {
		return strconv.FormatFloat(math.Inf(1), 'g', -1, 64), nil
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("GET /config: gc.ratio-threshold %s: %w", raw, err)
	}
	return strconv.FormatFloat(v, 'g', -1, 64), nil
}

// set changes gc.ratio-threshold online: POST /config with a flat JSON
// object of dotted names and string values (TiKV status_server decode_json).
func (h *gcHold) set(ctx context.Context, addr, value string) error {
	body, err := json.Marshal(map[string]string{"gc.ratio-threshold": value})
	if err != nil {
		return err
	}
	if err := CallJSON(ctx, h.http, http.MethodPost, statusURL(h.tls, addr), body, nil); err != nil {
		return fmt.Errorf("set gc.ratio-threshold=%s: %w", value, err)
	}
	return nil
}
