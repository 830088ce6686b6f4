package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/task"
)

// ErrTargetInUse: a change stream (a BR log backup, a TiCDC changefeed or a
// pitr task) is registered on the target cluster. Data restore ingests as
// SSTs never reaches such a stream (TIKV-PROTOCOLS.md §8.10), so it would
// silently miss the restored data; BR refuses such a target for the same
// reason. It is a kind of ErrTargetNotEmpty (same exit status), and Force
// does not override it.
var ErrTargetInUse = fmt.Errorf("%w: a change stream is registered on it", ErrTargetNotEmpty)

// Keys in the target's PD etcd that register a change stream.
const (
	// brStreamInfoPrefix holds one key per BR log backup task
	// (pingcap/tidb br/pkg/streamhelper: /tidb/br-stream/info/<task>).
	brStreamInfoPrefix = "/tidb/br-stream/info/"
	// cdcPrefix is TiCDC's root; a changefeed is a key
	// .../changefeed/info/<id> under it (/tidb/cdc/<cluster>/<namespace>/
	// since TiCDC 6.2, /tidb/cdc/changefeed/info/ before).
	cdcPrefix        = "/tidb/cdc/"
	cdcChangefeedKey = "/changefeed/info/"
)

// Defaults of PrepareOptions.
const (
	// DefaultPauseTTL is how long one pause of PD's schedulers lasts; BR
	// uses 5 min (br/pkg/pdutil/pd.go pauseTimeout) and refreshes it every
	// third of that.
	DefaultPauseTTL = 5 * time.Minute
	// DefaultMaxSplitKeys caps the pre-split keys of one restore.
	DefaultMaxSplitKeys = 10000
	// splitBatch is the keys per SplitRegions call and the regions per
	// ScatterRegions call.
	splitBatch = 128
)

// PrepareOptions configures what a restore does to the target cluster
// around the writes.
type PrepareOptions struct {
	// PauseTTL is how long each pause of PD's schedulers and each
	// temporary config override lasts; a keepalive renews both every
	// PauseTTL/3, so a restore that dies leaves them to lapse within
	// PauseTTL. 0: DefaultPauseTTL; it is rounded up to whole seconds.
	PauseTTL time.Duration
	// MaxSplitKeys caps the pre-split keys (0: DefaultMaxSplitKeys;
	// negative: no pre-split). Above the cap, evenly spaced keys are kept.
	MaxSplitKeys int
}

func (p *PrepareOptions) setDefaults() {
	if p.PauseTTL <= 0 {
		p.PauseTTL = DefaultPauseTTL
	}
	if p.PauseTTL < time.Second {
		p.PauseTTL = time.Second
	}
	if p.MaxSplitKeys == 0 {
		p.MaxSplitKeys = DefaultMaxSplitKeys
	}
}

// pausedSchedulers are the PD schedulers a restore pauses, when PD runs
// them: the ones BR pauses because they move leaders and peers under an
// import (br/pkg/pdutil/pd.go Schedulers). evict-slow-store is left running,
// as BR leaves it: it protects the cluster from a failing store.
var pausedSchedulers = []string{
	"balance-leader-scheduler", "balance-region-scheduler", "balance-hot-region-scheduler",
	"shuffle-leader-scheduler", "shuffle-region-scheduler", "shuffle-hot-region-scheduler",
}

// BalanceSchedulers are the schedulers a restore pauses (a copy): those
// that move leaders and peers. A volume backup pauses them too.
func BalanceSchedulers() []string { return slices.Clone(pausedSchedulers) }

// loweredConfig are the schedule config keys a restore sets to 0 for the
// duration, through PD's temporary (TTL) config: no merges, so regions
// being written are not merged away (BR lowers max-merge-region-size/keys;
// merge-schedule-limit 0 stops the merge checker's operators outright).
var loweredConfig = []string{"max-merge-region-size", "max-merge-region-keys", "merge-schedule-limit"}

// prepareTarget readies the target for the writes and returns the function
// that undoes it; see doc.go "What restore does to the target". It refuses
// (ErrTargetInUse) before changing anything.
func prepareTarget(ctx context.Context, o Options, log hclog.Logger, tgt *target, plan *Plan) (undo func(), err error) {
	po := o.Prepare
	po.setDefaults()
	if err := checkNotInUse(ctx, connector.Config{PDAddrs: o.PDAddrs, TLS: o.TLS, Timeout: 10 * time.Second}); err != nil {
		return nil, err
	}
	resume, err := PauseScheduling(ctx, log, o.TLS, o.PDAddrs, tgt.http, po.PauseTTL, pausedSchedulers, loweredConfig)
	if err != nil {
		return nil, err
	}
	if po.MaxSplitKeys > 0 {
		splitTarget(ctx, log, tgt, splitKeys(plan, po.MaxSplitKeys))
	}
	return resume, nil
}

// PauseScheduling pauses those of the schedulers PD runs and sets the
// schedule config keys lower to 0, each for ttl (whole seconds), renews
// both every ttl/3 until resume is called, and returns resume, which
// undoes them and never fails (what it cannot undo lapses within ttl).
// A volume backup pauses PD this way around its snapshots.
func PauseScheduling(ctx context.Context, log hclog.Logger, t connector.TLS, pdAddrs []string, hc *http.Client, ttl time.Duration,
	schedulers, lower []string) (resume func(), err error) {
	ttl = max(ttl, time.Second)
	ps := &pdSchedule{log: log.Named("pd-schedule"), addrs: pdHTTPAddrs(t, pdAddrs), ttl: ttl, http: hc, candidates: schedulers, lower: lower}
	if err := ps.pause(ctx); err != nil {
		ps.resume()
		return nil, err
	}
	return ps.resume, nil
}

// checkNotInUse refuses a target whose PD etcd registers a BR log backup,
// a TiCDC changefeed or a pitr task.
func checkNotInUse(ctx context.Context, c connector.Config) error {
	cli, err := connector.Etcd(ctx, c, task.Root)
	if err != nil {
		return fmt.Errorf("the target's etcd: %w", err)
	}
	defer cli.Close()
	first := func(prefix, contains string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}
		if contains == "" {
			opts = append(opts, clientv3.WithLimit(1))
		}
		resp, err := cli.Get(cctx, prefix, opts...)
		if err != nil {
			return "", fmt.Errorf("%w: read %s from the target's etcd: %v", ErrUnavailable, prefix, err)
		}
		for _, kv := range resp.Kvs {
			if strings.Contains(string(kv.Key), contains) {
				return string(kv.Key), nil
			}
		}
		return "", nil
	}
	for _, c := range []struct{ prefix, contains, what string }{
		{brStreamInfoPrefix, "", "a BR log backup task"},
		{cdcPrefix, cdcChangefeedKey, "a TiCDC changefeed"},
		{task.TaskPrefix, "", "a pitr log backup task"},
	} {
		key, err := first(c.prefix, c.contains)
		if err != nil {
			return err
		}
		if key != "" {
			return fmt.Errorf("%w: %s is registered on the target (%s), and it would not see the restored data; stop it or restore elsewhere",
				ErrTargetInUse, c.what, key)
		}
	}
	return nil
}

// pdHTTPAddrs turns PD addresses into base URLs of its HTTP API, which PD
// serves on its client URL.
func pdHTTPAddrs(t connector.TLS, addrs []string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, connector.URL(t, strings.TrimSuffix(a, "/"), ""))
	}
	return out
}

// pdSchedule pauses PD's schedulers and lowers its merge config with a TTL,
// keeps both alive, and undoes them (tikv/pd server/api/scheduler.go
// PauseOrResumeScheduler, server/api/config.go SetConfig with ttlSecond).
type pdSchedule struct {
	log   hclog.Logger
	addrs []string
	http  *http.Client
	ttl   time.Duration

	candidates []string       // the schedulers to pause, when PD runs them
	lower      []string       // the config keys to set to 0
	schedulers []string       // the ones paused
	original   map[string]any // the lowered keys' stored values

	stop    chan struct{}
	wg      sync.WaitGroup
	resumed sync.Once
}

// pause pauses the schedulers and lowers the config once, then starts the
// keepalive. Any failure of the first round is returned.
func (p *pdSchedule) pause(ctx context.Context) error {
	var names []string
	if err := p.call(ctx, http.MethodGet, "schedulers", nil, &names); err != nil {
		return fmt.Errorf("%w: list PD schedulers: %v", ErrUnavailable, err)
	}
	for _, n := range names {
		if slices.Contains(p.candidates, n) {
			p.schedulers = append(p.schedulers, n)
		}
	}
	var cfg map[string]any
	if err := p.call(ctx, http.MethodGet, "config/schedule", nil, &cfg); err != nil {
		return fmt.Errorf("%w: read PD schedule config: %v", ErrUnavailable, err)
	}
	p.original = map[string]any{}
	for _, k := range p.lower {
		if v, ok := cfg[k]; ok {
			p.original[k] = v
		}
	}
	if err := p.renew(ctx); err != nil {
		return err
	}
	p.log.Info("paused PD schedulers", "schedulers", p.schedulers, "lowered", p.lower, "ttl", p.ttl)
	p.stop = make(chan struct{})
	p.wg.Add(1)
	go p.keepalive()
	return nil
}

// renew (re)applies the pauses and the lowered config for one TTL.
func (p *pdSchedule) renew(ctx context.Context) error {
	secs := int64((p.ttl + time.Second - 1) / time.Second)
	for _, n := range p.schedulers {
		if err := p.call(ctx, http.MethodPost, "schedulers/"+n, map[string]int64{"delay": secs}, nil); err != nil {
			return fmt.Errorf("%w: pause PD scheduler %s: %v", ErrUnavailable, n, err)
		}
	}
	if len(p.original) == 0 {
		return nil
	}
	low := map[string]any{}
	for k := range p.original {
		low["schedule."+k] = 0
	}
	if err := p.call(ctx, http.MethodPost, "config?ttlSecond="+strconv.FormatInt(secs, 10), low, nil); err != nil {
		return fmt.Errorf("%w: lower PD merge config: %v", ErrUnavailable, err)
	}
	return nil
}

func (p *pdSchedule) keepalive() {
	defer p.wg.Done()
	tick := time.NewTicker(p.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.ttl/3)
		err := p.renew(ctx)
		cancel()
		if err != nil {
			p.log.Warn("renew the pause of PD schedulers; retrying at the next round", "error", err)
		}
	}
}

// resume stops the keepalive, resumes the paused schedulers (delay 0) and
// drops the temporary config (ttlSecond=0 with the original values, as BR
// does), so PD is as before. It runs at most once and does not fail: what
// it cannot undo lapses within the TTL, and it says so.
func (p *pdSchedule) resume() {
	p.resumed.Do(func() {
		if p.stop != nil {
			close(p.stop)
			p.wg.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for _, n := range p.schedulers {
			if err := p.call(ctx, http.MethodPost, "schedulers/"+n, map[string]int64{"delay": 0}, nil); err != nil {
				p.log.Warn("resume PD scheduler; it resumes by itself when its pause lapses", "scheduler", n, "lapses_within", p.ttl, "error", err)
			}
		}
		if len(p.original) > 0 {
			orig := map[string]any{}
			for k, v := range p.original {
				orig["schedule."+k] = v
			}
			if err := p.call(ctx, http.MethodPost, "config?ttlSecond=0", orig, nil); err != nil {
				p.log.Warn("restore PD merge config; the temporary values lapse by themselves", "lapses_within", p.ttl, "error", err)
			}
		}
		if len(p.schedulers) > 0 || len(p.original) > 0 {
			p.log.Info("resumed PD schedulers", "schedulers", p.schedulers)
		}
	})
}

// call sends one request to the first PD that answers it.
func (p *pdSchedule) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	var errs []error
	for _, a := range p.addrs {
		err := p.callOne(ctx, method, a+"/pd/api/v1/"+path, body, out)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

func (p *pdSchedule) callOne(ctx context.Context, method, url string, body []byte, out any) error {
	return CallJSON(ctx, p.http, method, url, body, out)
}

// splitKeys returns the raw keys to pre-split the target at: the source's
// region boundaries inside the restore ranges (the plan's units are the
// ranges cut at every boundary the metas' coverage records) and the ranges'
// own ends, sorted, deduplicated, without the empty key; at most max, evenly
// spaced when there are more.
func splitKeys(plan *Plan, limit int) [][]byte {
	var keys [][]byte
	for _, u := range plan.Units {
		for _, k := range [][]byte{u.Start, u.End} {
			if len(k) > 0 {
				keys = append(keys, k)
			}
		}
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	if len(keys) > limit {
		picked := make([][]byte, 0, limit)
		for i := 0; i < limit; i++ {
			picked = append(picked, keys[i*len(keys)/limit])
		}
		keys = picked
	}
	return keys
}

// splitTarget splits the target at keys through PD (SplitRegions takes
// memcomparable-encoded keys, as BR's split client sends them) and
// scatters the new regions, before anything is written, so the writes land
// on source-sized regions spread over the stores instead of splitting one
// region over and over. Failures only cost speed: they are logged, and the
// writes follow whatever regions the target has.
func splitTarget(ctx context.Context, log hclog.Logger, tgt *target, keys [][]byte) {
	if len(keys) == 0 {
		return
	}
	var ids []uint64
	unfinished := 0
	for i := 0; i < len(keys); i += splitBatch {
		batch := keys[i:min(i+splitBatch, len(keys))]
		enc := make([][]byte, len(batch))
		for j, k := range batch {
			enc[j] = keyspace.EncodeKey(k)
		}
		resp, err := splitRetry(ctx, func() (*splitResult, error) { return tgt.splitRegions(ctx, enc) })
		if err != nil {
			log.Warn("pre-split the target; writing into its regions as they are", "keys", len(batch), "error", err)
			return
		}
		ids = append(ids, resp.ids...)
		unfinished += len(batch) * int(100-min(resp.pct, 100)) / 100
	}
	scattered := 0
	for i := 0; i < len(ids); i += splitBatch {
		batch := ids[i:min(i+splitBatch, len(ids))]
		if err := tgt.scatterRegions(ctx, batch); err != nil {
			log.Warn("scatter the pre-split regions", "regions", len(batch), "error", err)
			continue
		}
		scattered += len(batch)
	}
	tgt.forgetRegions()
	log.Info("pre-split the target", "keys", len(keys), "new_regions", len(ids), "not_split", unfinished, "scattered", scattered)
}

// splitRetry tries a split call three times, but not against a PD that
// does not serve it (Unimplemented): pre-splitting is an optimisation.
func splitRetry(ctx context.Context, f func() (*splitResult, error)) (*splitResult, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var r *splitResult
		if r, err = f(); err == nil || status.Code(err) == codes.Unimplemented || ctx.Err() != nil {
			return r, err
		}
		select {
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, err
}

type splitResult struct {
	ids []uint64
	pct uint64
}

// splitRegions asks PD to split at the encoded keys.
func (t *target) splitRegions(ctx context.Context, enc [][]byte) (*splitResult, error) {
	resp, err := t.pd.SplitRegions(ctx, enc)
	if err != nil {
		return nil, err
	}
	if e := resp.GetHeader().GetError(); e != nil {
		return nil, fmt.Errorf("split regions: %s", e.GetMessage())
	}
	return &splitResult{ids: resp.GetRegionsId(), pct: resp.GetFinishedPercentage()}, nil
}

// scatterRegions asks PD to scatter the regions.
func (t *target) scatterRegions(ctx context.Context, ids []uint64) error {
	resp, err := t.pd.ScatterRegions(ctx, ids)
	if err != nil {
		return err
	}
	if n := len(resp.GetFailedRegionsId()); n > 0 {
		return fmt.Errorf("%d of %d regions not scattered", n, len(ids))
	}
	return nil
}

// forgetRegions drops the region cache (the topology just changed).
func (t *target) forgetRegions() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.regions = nil
}
