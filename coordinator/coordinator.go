package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tikv/client-go/v2/txnkv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// ErrNotLeader is returned by a write of a term that is no longer the
// elected one: its election key is gone or was re-created (I6).
var ErrNotLeader = errors.New("not the leader coordinator")

// Coordinator campaigns for leadership and, while elected, runs one term at
// a time: a fresh term object per election, which ticks until its session
// ends.
type Coordinator struct {
	cfg      Config
	log      hclog.Logger
	etcd     *clientv3.Client
	pd       PD
	storMet  *storage.MetricsSet // pitr_storage_* of every task's checkpoint writes
	own      *Clients            // connections New made (closed by Close)
	kv       *txnkv.Client       // the lock resolver's client, when New made it
	met      *metrics
	gatherer prometheus.Gatherer

	httpLn  net.Listener
	httpSrv *http.Server

	leader   atomic.Bool
	lastTick atomic.Int64 // unix ms of the end of the last good tick
	mu       sync.Mutex
	cur      *term
	lastErr  string

	closeOnce sync.Once
	// now is the clock (tests may replace it before Run).
	now func() time.Time
}

// New connects (unless cfg carries clients), registers the metrics and
// opens the HTTP listener.
func New(cfg Config) (c *Coordinator, err error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.Named("coordinator").With("id", cfg.ID)
	reg := cfg.Registerer
	gath := cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gath = r, r
	} else if gath == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gath = g
		} else {
			gath = prometheus.NewRegistry()
		}
	}
	c = &Coordinator{cfg: cfg, log: log, gatherer: gath, etcd: cfg.Etcd, pd: cfg.PD, now: time.Now}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.met, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if c.storMet, err = storage.NewMetricsSet(reg, storage.MetricsOptions{}); err != nil {
		return nil, fmt.Errorf("register storage metrics: %w", err)
	}
	if err := c.connectLocks(); err != nil {
		return nil, err
	}
	if c.etcd == nil || c.pd == nil {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
		defer cancel()
		if c.own, err = Connect(ctx, c.connCfg()); err != nil {
			return nil, err
		}
		if c.etcd == nil {
			c.etcd = c.own.Etcd
		}
		if c.pd == nil {
			c.pd = c.own.PD
		}
	}
	if cfg.HTTPAddr != "-" {
		if c.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
		}
		c.httpSrv = &http.Server{Handler: c.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	}
	log.Info("coordinator ready", "pd", cfg.PDAddrs, "http", c.HTTPAddr(), "tick", cfg.TickInterval, "safepoint_ttl", cfg.SafePointTTL)
	return c, nil
}

// ID is the coordinator's name in the election.
func (c *Coordinator) ID() string { return c.cfg.ID }

// IsLeader reports whether a term of this coordinator is running.
func (c *Coordinator) IsLeader() bool { return c.leader.Load() }

// HTTPAddr is the address of /metrics and /healthz ("" when disabled).
func (c *Coordinator) HTTPAddr() string {
	if c.httpLn == nil {
		return ""
	}
	return c.httpLn.Addr().String()
}

// Run campaigns, leads and serves HTTP until ctx ends. On return the
// leadership is resigned, so another coordinator takes over at once.
func (c *Coordinator) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if c.httpSrv != nil {
		g.Go(func() error {
			if err := c.httpSrv.Serve(c.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve http: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = c.httpSrv.Shutdown(sctx)
			return nil
		})
	}
	g.Go(func() error {
		c.campaignLoop(ctx)
		return nil
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Close releases what New opened. Call it after Run returned.
func (c *Coordinator) Close() error {
	c.closeOnce.Do(func() {
		if c.httpSrv != nil {
			_ = c.httpSrv.Close()
		}
		if c.httpLn != nil {
			_ = c.httpLn.Close()
		}
		if c.own != nil {
			c.own.Close()
		}
		if c.kv != nil {
			_ = c.kv.Close()
		}
	})
	return nil
}

// campaignLoop campaigns and leads, term after term, until ctx ends.
func (c *Coordinator) campaignLoop(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.campaign(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.setErr(err)
			c.log.Warn("election term ended", "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// campaign runs one session: it waits to be elected, leads one term until
// the session ends (lease lost, partition) or ctx ends, then resigns.
func (c *Coordinator) campaign(ctx context.Context) error {
	sess, err := concurrency.NewSession(c.etcd, concurrency.WithTTL(int(c.cfg.SessionTTL/time.Second)))
	if err != nil {
		return fmt.Errorf("%w: start etcd session: %v", ErrUnavailable, err)
	}
	defer sess.Close() // revokes the lease: a graceful stop hands over at once
	el := concurrency.NewElection(sess, task.ElectionPrefix)
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-tctx.Done():
		}
	}()
	c.setErr(nil)
	if err := el.Campaign(tctx, c.cfg.ID); err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return errors.New("etcd session lost while campaigning")
		}
		return fmt.Errorf("campaign: %w", err)
	}
	t := newTerm(c, el.Key(), el.Rev(), tctx.Done())
	c.mu.Lock()
	c.cur = t
	c.mu.Unlock()
	c.leader.Store(true)
	c.met.isLeader.Set(1)
	c.met.terms.Inc()
	c.log.Info("elected leader", "term", t.rev, "key", t.key)
	err = t.run(tctx)
	c.leader.Store(false)
	c.met.isLeader.Set(0)
	c.met.resetTasks()
	c.mu.Lock()
	c.cur = nil
	c.mu.Unlock()
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = el.Resign(rctx)
	rcancel()
	switch {
	case ctx.Err() != nil:
		c.log.Info("resigned leadership", "term", t.rev)
		return nil
	case err != nil:
		return fmt.Errorf("term %d: %w", t.rev, err)
	default:
		return fmt.Errorf("term %d: etcd session lost", t.rev)
	}
}

func (c *Coordinator) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.lastErr = ""
	} else {
		c.lastErr = err.Error()
	}
}

// currentTerm returns the running term (nil when not leading).
func (c *Coordinator) currentTerm() *term {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// Healthy returns what is wrong; empty means healthy. A leader whose last
// good tick is older than a few tick intervals is unhealthy; a standby is
// healthy while it can campaign.
func (c *Coordinator) Healthy() []string {
	var out []string
	c.mu.Lock()
	if c.lastErr != "" {
		out = append(out, c.lastErr)
	}
	c.mu.Unlock()
	if c.IsLeader() {
		limit := 3*c.cfg.TickInterval + c.cfg.PollTimeout + 5*time.Second
		if last := time.UnixMilli(c.lastTick.Load()); c.now().Sub(last) > limit {
			out = append(out, fmt.Sprintf("leader: no good tick since %s", last.UTC().Format(time.RFC3339)))
		}
	}
	return out
}

func (c *Coordinator) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(c.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		role := "standby"
		if c.IsLeader() {
			role = "leader"
		}
		if problems := c.Healthy(); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s: %s\n", role, problems)
			return
		}
		fmt.Fprintf(w, "ok %s\n", role)
	})
	return mux
}
