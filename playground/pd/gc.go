package pd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// GCWorkerServiceID is the service safepoint TiDB's GC worker keeps, which
// AdvanceGC plays here. It never expires.
const GCWorkerServiceID = "gc_worker"

// errSafePointBehind is returned when a GC barrier would be below the GC
// (txn) safepoint.
var errSafePointBehind = errors.New("safepoint is behind the GC safepoint")

// serviceSafePoint is the persisted form of one service safepoint (PD's
// endpoint.ServiceSafePoint).
type serviceSafePoint struct {
	ServiceID string `json:"service_id"`
	ExpiredAt int64  `json:"expired_at"` // unix seconds; math.MaxInt64 = never
	SafePoint uint64 `json:"safe_point"`
}

func (p *serviceSafePoint) expired(now time.Time) bool { return p.ExpiredAt < now.Unix() }

// ttlAt returns the seconds left at now.
func (p *serviceSafePoint) ttlAt(now time.Time) int64 {
	if p.ExpiredAt == math.MaxInt64 {
		return math.MaxInt64
	}
	return p.ExpiredAt - now.Unix()
}

func expiryAt(now time.Time, ttl int64) int64 {
	if ttl >= math.MaxInt64-now.Unix() {
		return math.MaxInt64
	}
	return now.Unix() + ttl
}

func (s *Server) gcSafePointKey() string { return s.root + "/gc/safe_point" }

func (s *Server) serviceSafePointPrefix() string { return s.root + "/gc/safe_point/service/" }

func (s *Server) loadGCSafePoint(ctx context.Context) (uint64, error) {
	resp, err := s.cli.Get(ctx, s.gcSafePointKey())
	if err != nil {
		return 0, fmt.Errorf("load gc safepoint: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	v, err := strconv.ParseUint(string(resp.Kvs[0].Value), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("load gc safepoint: %w", err)
	}
	return v, nil
}

func (s *Server) saveGCSafePoint(ctx context.Context, sp uint64) error {
	if _, err := s.cli.Put(ctx, s.gcSafePointKey(), strconv.FormatUint(sp, 16)); err != nil {
		return fmt.Errorf("save gc safepoint: %w", err)
	}
	return nil
}

func (s *Server) saveServiceSafePoint(ctx context.Context, p *serviceSafePoint) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, s.serviceSafePointPrefix()+p.ServiceID, string(b)); err != nil {
		return fmt.Errorf("save service safepoint %q: %w", p.ServiceID, err)
	}
	return nil
}

func (s *Server) removeServiceSafePoint(ctx context.Context, id string) error {
	if _, err := s.cli.Delete(ctx, s.serviceSafePointPrefix()+id); err != nil {
		return fmt.Errorf("remove service safepoint %q: %w", id, err)
	}
	return nil
}

// loadServiceSafePoints returns every stored service safepoint, by id.
func (s *Server) loadServiceSafePoints(ctx context.Context) (map[string]*serviceSafePoint, error) {
	resp, err := s.cli.Get(ctx, s.serviceSafePointPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("load service safepoints: %w", err)
	}
	out := make(map[string]*serviceSafePoint, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		p := &serviceSafePoint{}
		if err := json.Unmarshal(kv.Value, p); err != nil {
			return nil, fmt.Errorf("decode service safepoint %q: %w", kv.Key, err)
		}
		p.ServiceID = strings.TrimPrefix(string(kv.Key), s.serviceSafePointPrefix())
		out[p.ServiceID] = p
	}
	return out, nil
}

// loadMinServiceSafePoint returns the minimum live service safepoint, like
// PD's LoadMinServiceGCSafePoint: expired entries are removed, and a missing
// "gc_worker" is created (at the minimum of the others, or 0), so there is
// always one.
func (s *Server) loadMinServiceSafePoint(ctx context.Context, now time.Time) (*serviceSafePoint, error) {
	all, err := s.loadServiceSafePoints(ctx)
	if err != nil {
		return nil, err
	}
	var min *serviceSafePoint
	for id, p := range all {
		if id != GCWorkerServiceID && p.expired(now) {
			if err := s.removeServiceSafePoint(ctx, id); err != nil {
				return nil, err
			}
			continue
		}
		if min == nil || p.SafePoint < min.SafePoint || (p.SafePoint == min.SafePoint && p.ServiceID < min.ServiceID) {
			min = p
		}
	}
	if _, ok := all[GCWorkerServiceID]; !ok {
		w := &serviceSafePoint{ServiceID: GCWorkerServiceID, ExpiredAt: math.MaxInt64}
		if min != nil {
			w.SafePoint = min.SafePoint
		}
		if err := s.saveServiceSafePoint(ctx, w); err != nil {
			return nil, err
		}
		if min == nil || w.SafePoint < min.SafePoint {
			min = w
		}
	}
	return min, nil
}

// updateServiceSafePoint implements PD's legacy UpdateServiceGCSafePoint:
// ttl <= 0 removes the service; otherwise the safepoint is stored unless it is
// below the current minimum (or the GC safepoint). It returns the minimum
// live service safepoint after the update and whether it stored anything.
func (s *Server) updateServiceSafePoint(ctx context.Context, id string, ttl int64, sp uint64) (*serviceSafePoint, bool, error) {
	if id == "" {
		return nil, false, errors.New("empty service id")
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	return s.updateServiceSafePointLocked(ctx, id, ttl, sp)
}

func (s *Server) updateServiceSafePointLocked(ctx context.Context, id string, ttl int64, sp uint64) (*serviceSafePoint, bool, error) {
	now := s.wallNow()
	if ttl <= 0 && id != GCWorkerServiceID {
		if err := s.removeServiceSafePoint(ctx, id); err != nil {
			return nil, false, err
		}
	}
	min, err := s.loadMinServiceSafePoint(ctx, now)
	if err != nil {
		return nil, false, err
	}
	if ttl <= 0 || sp < min.SafePoint {
		return min, false, nil
	}
	gcSP, err := s.loadGCSafePoint(ctx)
	if err != nil {
		return nil, false, err
	}
	if sp < gcSP {
		return min, false, nil
	}
	p := &serviceSafePoint{ServiceID: id, ExpiredAt: expiryAt(now, ttl), SafePoint: sp}
	if id == GCWorkerServiceID {
		p.ExpiredAt = math.MaxInt64
	}
	if err := s.saveServiceSafePoint(ctx, p); err != nil {
		return nil, false, err
	}
	if id == min.ServiceID {
		if min, err = s.loadMinServiceSafePoint(ctx, now); err != nil {
			return nil, false, err
		}
	}
	return min, true, nil
}

// setGCBarrier implements PD 9's SetGCBarrier on the service safepoints: a
// barrier may be set anywhere at or above the GC (txn) safepoint.
func (s *Server) setGCBarrier(ctx context.Context, id string, ts uint64, ttl int64) (*serviceSafePoint, error) {
	if id == "" || id == GCWorkerServiceID {
		return nil, fmt.Errorf("invalid barrier id %q", id)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("invalid ttl %d", ttl)
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	gcSP, err := s.loadGCSafePoint(ctx)
	if err != nil {
		return nil, err
	}
	if ts < gcSP {
		return nil, fmt.Errorf("barrier %q at %d: %w %d", id, ts, errSafePointBehind, gcSP)
	}
	p := &serviceSafePoint{ServiceID: id, ExpiredAt: expiryAt(s.wallNow(), ttl), SafePoint: ts}
	if err := s.saveServiceSafePoint(ctx, p); err != nil {
		return nil, err
	}
	return p, nil
}

// deleteGCBarrier removes a barrier and returns it (nil if there was none).
func (s *Server) deleteGCBarrier(ctx context.Context, id string) (*serviceSafePoint, error) {
	if id == GCWorkerServiceID {
		return nil, fmt.Errorf("invalid barrier id %q", id)
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	all, err := s.loadServiceSafePoints(ctx)
	if err != nil {
		return nil, err
	}
	p, ok := all[id]
	if !ok {
		return nil, nil
	}
	return p, s.removeServiceSafePoint(ctx, id)
}

// ServiceSafePoints returns the live (unexpired) service safepoints by
// service id, "gc_worker" included once it exists.
func (s *Server) ServiceSafePoints(ctx context.Context) (map[string]uint64, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	all, err := s.loadServiceSafePoints(ctx)
	if err != nil {
		return nil, err
	}
	now := s.wallNow()
	out := make(map[string]uint64, len(all))
	for id, p := range all {
		if !p.expired(now) {
			out[id] = p.SafePoint
		}
	}
	return out, nil
}

// GCSafePoint returns the cluster GC safepoint: versions older than it may
// be collected.
func (s *Server) GCSafePoint(ctx context.Context) (uint64, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	return s.loadGCSafePoint(ctx)
}

// gcTarget is the GC worker's decision: the new GC safepoint given the life
// time bound, the minimum live service safepoint and the current value.
func gcTarget(lifeTimeTS, minService, current uint64) uint64 {
	return max(current, min(lifeTimeTS, minService))
}

// lifeTimeTS returns the timestamp GCLifeTime before now (a TSO), at 0 when
// now is younger than that.
func lifeTimeTS(now uint64, lifeTime time.Duration) uint64 {
	p := ExtractPhysical(now) - lifeTime.Milliseconds()
	if p < 0 {
		return 0
	}
	return ComposeTS(p, 0)
}

// AdvanceGC does what TiDB's GC worker does each round: it moves the
// "gc_worker" service safepoint to now - GCLifeTime (now is a TSO), then sets
// the GC safepoint to the minimum of that and every live service safepoint,
// never moving it backwards. It returns the GC safepoint.
func (s *Server) AdvanceGC(ctx context.Context, now uint64) (uint64, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	target := lifeTimeTS(now, s.cfg.GCLifeTime)
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	min, _, err := s.updateServiceSafePointLocked(ctx, GCWorkerServiceID, math.MaxInt64, target)
	if err != nil {
		return 0, fmt.Errorf("advance gc: %w", err)
	}
	cur, err := s.loadGCSafePoint(ctx)
	if err != nil {
		return 0, fmt.Errorf("advance gc: %w", err)
	}
	next := gcTarget(target, min.SafePoint, cur)
	if next > cur {
		if err := s.saveGCSafePoint(ctx, next); err != nil {
			return 0, fmt.Errorf("advance gc: %w", err)
		}
		s.log.Debug("gc safepoint advanced", "from", cur, "to", next, "blocker", min.ServiceID)
	}
	return next, nil
}
