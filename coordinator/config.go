package coordinator

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/tikv"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/task"
)

// Defaults of the zero fields of Config.
const (
	DefaultTickInterval   = time.Second
	DefaultPollTimeout    = 2 * time.Second
	DefaultSafePointTTL   = task.DefaultSafePointTTL
	DefaultSessionTTL     = 10 * time.Second
	DefaultHTTPAddr       = "127.0.0.1:9597"
	DefaultConnectTimeout = 10 * time.Second
	// DefaultResolveLocksAfter is about what BR's advancer and TiCDC wait
	// before they resolve the locks that hold a range back: far above a
	// healthy lag (flush interval + tick), below what blocks GC for long.
	DefaultResolveLocksAfter = 60 * time.Second
	// DefaultRetentionInterval: how often the retention policy runs.
	DefaultRetentionInterval = time.Hour
)

// Config configures a Coordinator. Zero fields take the defaults above; New
// calls Validate.
type Config struct {
	// PDAddrs are PD's client URLs; PD's etcd is reached on the same
	// addresses.
	PDAddrs []string
	// TLS is the cluster's TLS set-up, used for PD, etcd, client-go and the
	// agents' gRPC service (zero: plaintext).
	TLS connector.TLS
	// ID names this coordinator in the election and in logs (default
	// host-pid).
	ID string
	// TickInterval is the time between two checkpoint computations.
	TickInterval time.Duration
	// PollTimeout bounds one GetProgress call to one agent.
	PollTimeout time.Duration
	// SafePointTTL is the TTL of the PD service safepoint "pitr-<task>";
	// it is refreshed every tick, and a task paused for longer fails.
	SafePointTTL time.Duration
	// SessionTTL is the TTL of the election lease: a leader that dies or is
	// partitioned away is replaced after about this long.
	SessionTTL time.Duration
	// HTTPAddr serves /metrics and /healthz; "-" disables it.
	HTTPAddr string
	// MaxSlow is how many slow ranges each task's status lists.
	MaxSlow int
	// ConnectTimeout bounds the wait for PD and etcd at start.
	ConnectTimeout time.Duration
	// ResolveLocksAfter: the leader resolves the locks of dead transactions
	// (client-go's lock resolver; live ones are left alone) in each slow
	// range whose checkpoint lags more than this, at most once per range
	// per half of it (DESIGN I10). Negative turns it off.
	ResolveLocksAfter time.Duration
	// Locks resolves locks. Nil: New makes one on PDAddrs (a client-go
	// transaction client); with neither, lock resolution is off and New
	// logs a warning.
	Locks LockResolver
	// SnapshotInterval: the leader takes a snapshot backup of every running
	// task (package snapshot, into the task's root, through the agents)
	// when its newest one is older than this, so that a restore never
	// replays more than about this much log. 0 turns it off.
	SnapshotInterval time.Duration
	// Keep: the leader truncates each task's log (restore.Truncate) to
	// now − Keep every RetentionInterval, keeping the newest snapshot
	// before that point and the log after it; 0 keeps everything.
	// KeepSnapshots > 0 never truncates past the KeepSnapshots-th newest
	// finished snapshot (and nothing while there are fewer).
	Keep              time.Duration
	KeepSnapshots     int
	RetentionInterval time.Duration
	// NoCompaction turns off the compaction of each task's log in the
	// same pass (restore.Compact), which is on by default;
	// CompactRateLimit bounds its storage bytes per second (0: none) and
	// CompactConcurrency its files read and key-range parts merged at once
	// (restore.CompactOptions.Concurrency; 0: restore's default).
	// CompactFileTarget is the size of its output files (0: restore's
	// default, 128 MiB) and CompactGrace how long superseded metas and
	// their files stay after their compacted meta (0:
	// restore.DefaultCompactGrace; longer than any restore).
	NoCompaction       bool
	CompactRateLimit   int64
	CompactConcurrency int
	CompactFileTarget  int64
	CompactGrace       time.Duration
	// CompactSealIdle: a store's newest chain is compacted too once idle
	// this long (0: restore.DefaultSealIdle).
	CompactSealIdle time.Duration
	// KV is the client-go store of scheduled snapshots (nil: New makes
	// one on PDAddrs when SnapshotInterval is set).
	KV *tikv.KVStore

	// Etcd and PD, when set, are used instead of connecting to PDAddrs (the
	// Coordinator does not close them).
	Etcd *clientv3.Client
	PD   PD

	Logger hclog.Logger
	// Registerer receives the metrics (nil: a fresh registry); Gatherer
	// serves /metrics (nil: the Registerer when it is also a Gatherer).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// SetDefaults fills the zero fields.
func (c *Config) SetDefaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "coordinator"
		}
		c.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.PollTimeout == 0 {
		c.PollTimeout = DefaultPollTimeout
	}
	if c.SafePointTTL == 0 {
		c.SafePointTTL = DefaultSafePointTTL
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.MaxSlow == 0 {
		c.MaxSlow = DefaultMaxSlow
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.RetentionInterval == 0 {
		c.RetentionInterval = DefaultRetentionInterval
	}
	if c.ResolveLocksAfter == 0 {
		c.ResolveLocksAfter = DefaultResolveLocksAfter
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// ErrConfig marks configuration mistakes (Validate's errors).
var ErrConfig = errors.New("invalid coordinator config")

// Validate reports the first invalid field, after defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if c.Etcd == nil || c.PD == nil {
		if len(c.PDAddrs) == 0 {
			return bad("PD addresses are required (--pd)")
		}
		for _, a := range c.PDAddrs {
			if strings.TrimSpace(a) == "" {
				return bad("empty PD address in %q", strings.Join(c.PDAddrs, ","))
			}
		}
	}
	if err := c.TLS.Validate(); err != nil {
		return bad("%v", err)
	}
	if c.HTTPAddr != "-" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("http address %q: want host:port (or - to disable)", c.HTTPAddr)
		}
	}
	switch {
	case c.TickInterval < 10*time.Millisecond:
		return bad("tick interval %s is too short (at least 10ms)", c.TickInterval)
	case c.PollTimeout < 10*time.Millisecond:
		return bad("poll timeout %s is too short (at least 10ms)", c.PollTimeout)
	case c.SafePointTTL < time.Second:
		return bad("safepoint TTL %s is below PD's 1s granularity", c.SafePointTTL)
	case c.SessionTTL < time.Second:
		return bad("session TTL %s is below etcd's 1s granularity", c.SessionTTL)
	case c.CompactFileTarget < 0 || c.CompactGrace < 0 || c.CompactSealIdle < 0:
		return bad("compaction file target %d and grace %s must not be negative", c.CompactFileTarget, c.CompactGrace)
	case c.MaxSlow < 0:
		return bad("max slow %d is negative", c.MaxSlow)
	case c.ConnectTimeout <= 0:
		return bad("connect timeout %s is not positive", c.ConnectTimeout)
	case c.ResolveLocksAfter > 0 && c.ResolveLocksAfter < 2*c.TickInterval:
		return bad("resolve-locks-after %s is below two ticks (%s); negative turns lock resolution off", c.ResolveLocksAfter, 2*c.TickInterval)
	}
	return nil
}
