package pd

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/pitr-io/pitr/playground/cluster"
)

// Scheduler names, as PD lists them (tikv/pd pkg/schedule/config/config.go
// DefaultSchedulers: balance-region, balance-leader, balance-hot-region,
// evict-slow-store).
const (
	SchedulerBalanceLeader    = "balance-leader-scheduler"
	SchedulerBalanceRegion    = "balance-region-scheduler"
	SchedulerBalanceHotRegion = "balance-hot-region-scheduler"
	SchedulerEvictSlowStore   = "evict-slow-store-scheduler"
)

// defaultSchedulers are the schedulers a fresh PD runs.
var defaultSchedulers = []string{SchedulerBalanceHotRegion, SchedulerBalanceLeader, SchedulerBalanceRegion, SchedulerEvictSlowStore}

// defaultScheduleConfig holds the schedule config keys the playground
// knows, with PD's defaults (tikv/pd pkg/schedule/config/config.go). The
// values are JSON values as GET /pd/api/v1/config/schedule returns them.
func defaultScheduleConfig() map[string]any {
	return map[string]any{
		"max-merge-region-size":       float64(20),
		"max-merge-region-keys":       float64(200000),
		"split-merge-interval":        "1h0m0s",
		"max-snapshot-count":          float64(64),
		"max-pending-peer-count":      float64(64),
		"leader-schedule-limit":       float64(4),
		"region-schedule-limit":       float64(2048),
		"replica-schedule-limit":      float64(64),
		"merge-schedule-limit":        float64(8),
		"hot-region-schedule-limit":   float64(4),
		"enable-location-replacement": "true",
	}
}

// ttlConfigKeys are the keys POST /pd/api/v1/config?ttlSecond= accepts
// (tikv/pd pkg/schedule/config IsSupportedTTLConfig; BR and Lightning are
// its users). Anything else is "unsupported ttl config".
var ttlConfigKeys = map[string]bool{
	"schedule.max-snapshot-count":          true,
	"schedule.max-merge-region-size":       true,
	"schedule.max-pending-peer-count":      true,
	"schedule.max-merge-region-keys":       true,
	"schedule.leader-schedule-limit":       true,
	"schedule.region-schedule-limit":       true,
	"schedule.replica-schedule-limit":      true,
	"schedule.merge-schedule-limit":        true,
	"schedule.hot-region-schedule-limit":   true,
	"schedule.enable-location-replacement": true,
	"schedule.enable-tikv-split-region":    true,
}

type ttlValue struct {
	value   any
	expires time.Time
}

// schedule is PD's scheduling state: the schedule config, its temporary
// (TTL) overrides, and when each scheduler's pause runs out. As in PD, a
// pause is a deadline (ScheduleController.SetDelay), so a scheduler resumes
// by itself when it passes, and TTL overrides lapse the same way. The state
// is in memory: a PD restart forgets pauses, as real PD does; real PD keeps
// TTL overrides in etcd, the playground does not.
type schedule struct {
	mu     sync.Mutex
	config map[string]any      // without the "schedule." prefix
	ttl    map[string]ttlValue // with the "schedule." prefix, as PD keys them
	paused map[string]time.Time
	// splitAt is when each region was last split or created by a split:
	// the merge checker leaves it alone for split-merge-interval.
	splitAt map[uint64]time.Time
	started time.Time
}

func newSchedule(now time.Time) *schedule {
	sc := &schedule{config: defaultScheduleConfig(), ttl: map[string]ttlValue{}, paused: map[string]time.Time{},
		splitAt: map[uint64]time.Time{}, started: now}
	for _, n := range defaultSchedulers {
		sc.paused[n] = time.Time{}
	}
	return sc
}

// get returns the effective value of a schedule key (a TTL override that
// has not expired wins, as PersistOptions' getTTL* getters do).
func (sc *schedule) getLocked(key string, now time.Time) any {
	if v, ok := sc.ttl["schedule."+key]; ok {
		if now.Before(v.expires) {
			return v.value
		}
		delete(sc.ttl, "schedule."+key)
	}
	return sc.config[key]
}

func (sc *schedule) number(key string, now time.Time) float64 {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	switch v := sc.getLocked(key, now).(type) {
	case float64:
		return v
	case string:
		f, err := strconv.ParseFloat(v, 64)
		if err == nil {
			return f
		}
	}
	return 0
}

func (sc *schedule) duration(key string, now time.Time) time.Duration {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if s, ok := sc.getLocked(key, now).(string); ok {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	return 0
}

// isPaused reports whether a scheduler is paused at now (PD's
// ScheduleController.IsPaused: delayUntil > now).
func (sc *schedule) isPaused(name string, now time.Time) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return now.Before(sc.paused[name])
}

// pause pauses a scheduler (or "all") for delay seconds; 0 resumes
// (tikv/pd pkg/schedule/schedulers/scheduler_controller.go
// PauseOrResumeScheduler).
func (sc *schedule) pause(name string, delay int64, now time.Time) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	var names []string
	if name == "all" {
		for n := range sc.paused {
			names = append(names, n)
		}
	} else if _, ok := sc.paused[name]; ok {
		names = []string{name}
	} else {
		return errSchedulerNotFound
	}
	for _, n := range names {
		if delay > 0 {
			sc.paused[n] = now.Add(time.Duration(delay) * time.Second)
		} else {
			sc.paused[n] = time.Time{}
		}
	}
	return nil
}

// schedulers lists the scheduler names; status "paused" or "disabled"
// filters as PD's GetSchedulerByStatus does (nothing is ever disabled here).
func (sc *schedule) schedulers(status string, now time.Time) []string {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	var out []string
	for n, until := range sc.paused {
		switch status {
		case "paused":
			if !now.Before(until) {
				continue
			}
		case "disabled":
			continue
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// setTTL stores temporary overrides (ttl 0 deletes them), as PD's
// SaveTTLConfig does. Keys carry the "schedule." prefix.
func (sc *schedule) setTTL(vals map[string]any, ttl time.Duration, now time.Time) error {
	for k := range vals {
		if !ttlConfigKeys[k] {
			return fmt.Errorf("unsupported ttl config %s", k)
		}
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for k, v := range vals {
		if ttl <= 0 {
			delete(sc.ttl, k)
			continue
		}
		sc.ttl[k] = ttlValue{value: v, expires: now.Add(ttl)}
	}
	return nil
}

// set stores permanent values; keys without the "schedule." prefix.
func (sc *schedule) set(vals map[string]any) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for k := range vals {
		if _, ok := sc.config[k]; !ok {
			return fmt.Errorf("config item %s not found", k)
		}
	}
	for k, v := range vals {
		sc.config[k] = v
	}
	return nil
}

// snapshot returns the stored schedule config without the TTL overrides,
// which is what GET /pd/api/v1/config/schedule answers (PD's
// GetScheduleConfig reads the persisted config; TTL overrides only change
// what the getters return to the schedulers).
func (sc *schedule) snapshot() map[string]any {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	out := make(map[string]any, len(sc.config))
	for k, v := range sc.config {
		out[k] = v
	}
	return out
}

// onTopology records split times for the merge checker. It runs under the
// cluster's write lock.
func (sc *schedule) onTopology(ev cluster.Event, now time.Time) {
	if ev.Kind != cluster.EventSplit {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, r := range ev.New {
		sc.splitAt[r.ID] = now
	}
}

func (sc *schedule) splitRecently(id uint64, interval time.Duration, now time.Time) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if now.Sub(sc.started) < interval {
		return true // PD's merge checker waits split-merge-interval after start too
	}
	t, ok := sc.splitAt[id]
	return ok && now.Sub(t) < interval
}

// runBalancer is the playground's stand-in for PD's coordinator: every
// interval it runs one round of balance-leader and of the merge checker,
// each honouring its pause and the schedule config. It returns when the
// server closes. A round runs under opMu, which pauses and config changes
// also take, so once a pause has been answered no operator of an earlier
// round is still to come (real PD may still finish an operator it created
// just before the pause; the playground is stricter so tests are exact).
func (s *Server) runBalancer(interval time.Duration) {
	defer s.bg.Done()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-tick.C:
		}
		s.opMu.Lock()
		now := s.wallNow()
		s.balanceLeader(now, rng)
		s.mergeCheck(now, rng)
		s.opMu.Unlock()
		s.balancerRounds.Add(1)
	}
}

// leaderCounts returns the regions, how many of them each up store leads
// (every up store present, at 0 when it leads none) and which they are.
func (s *Server) leaderCounts() (regions []*cluster.Region, count map[uint64]int, led map[uint64][]*cluster.Region) {
	count, led = map[uint64]int{}, map[uint64][]*cluster.Region{}
	for _, st := range s.cluster.Stores() {
		if st.Up {
			count[st.ID] = 0
		}
	}
	regions = s.cluster.Regions()
	for _, r := range regions {
		if _, up := count[r.Leader]; up {
			count[r.Leader]++
			led[r.Leader] = append(led[r.Leader], r)
		}
	}
	return regions, count, led
}

// balanceLeader moves one leader from the store with the most leaders to
// the store with the fewest, when they differ by two or more (PD's
// balance-leader-scheduler, without its scoring and tolerance details). It
// does nothing while paused or with leader-schedule-limit 0.
func (s *Server) balanceLeader(now time.Time, rng *rand.Rand) {
	if s.sched.isPaused(SchedulerBalanceLeader, now) || s.sched.number("leader-schedule-limit", now) <= 0 {
		return
	}
	_, count, led := s.leaderCounts()
	if len(count) < 2 {
		return
	}
	var from, to uint64
	most, least := -1, math.MaxInt
	for id, n := range count {
		if n > most || (n == most && id < from) {
			from, most = id, n
		}
		if n < least || (n == least && id < to) {
			to, least = id, n
		}
	}
	if most-least < 2 {
		return
	}
	rs := led[from]
	r := rs[rng.Intn(len(rs))]
	if err := s.cluster.TransferLeader(r.ID, to); err != nil {
		s.log.Debug("balance-leader: transfer failed", "region", r.ID, "to", to, "error", err)
		return
	}
	s.log.Debug("balance-leader: moved leader", "region", r.ID, "from", from, "to", to)
}

// mergeCheck merges one region into an adjacent one, as PD's merge checker
// does for small regions (tikv/pd pkg/schedule/checker/merge_checker.go).
// Every playground region counts as small (test data is far below the
// default max-merge-region-size of 20 MiB; an empty region counts as 1 MiB
// in PD), so max-merge-region-size or max-merge-region-keys set to 0
// disables it, as does merge-schedule-limit 0. Regions split within
// split-merge-interval, and any region during split-merge-interval after PD
// started, are left alone.
func (s *Server) mergeCheck(now time.Time, rng *rand.Rand) {
	if s.sched.number("merge-schedule-limit", now) <= 0 ||
		s.sched.number("max-merge-region-size", now) < 1 || s.sched.number("max-merge-region-keys", now) <= 0 {
		return
	}
	interval := s.sched.duration("split-merge-interval", now)
	rs := s.cluster.Regions()
	if len(rs) < 2 {
		return
	}
	var cands []int
	for i := 0; i+1 < len(rs); i++ {
		if rs[i].Leader == 0 || rs[i+1].Leader == 0 {
			continue
		}
		if s.sched.splitRecently(rs[i].ID, interval, now) || s.sched.splitRecently(rs[i+1].ID, interval, now) {
			continue
		}
		cands = append(cands, i)
	}
	if len(cands) == 0 {
		return
	}
	i := cands[rng.Intn(len(cands))]
	if _, err := s.cluster.Merge(rs[i].ID, rs[i+1].ID); err != nil {
		s.log.Debug("merge-checker: merge failed", "source", rs[i].ID, "target", rs[i+1].ID, "error", err)
		return
	}
	s.log.Debug("merge-checker: merged", "source", rs[i].ID, "target", rs[i+1].ID)
}

// SchedulerPaused reports whether a scheduler is paused now (for tests).
func (s *Server) SchedulerPaused(name string) bool {
	return s.sched.isPaused(name, s.wallNow())
}

// ScheduleConfig returns the effective value of a schedule config key
// (TTL overrides applied), for tests.
func (s *Server) ScheduleConfig(key string) any {
	s.sched.mu.Lock()
	defer s.sched.mu.Unlock()
	return s.sched.getLocked(key, s.wallNow())
}

// Skew moves the clock of TTLs (safepoints, scheduler pauses, config
// overrides) forward by d, for tests of expiry.
func (s *Server) Skew(d time.Duration) { s.skew.Add(int64(d)) }
