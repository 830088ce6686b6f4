package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/coordinator"
)

// coordinatorFile is the TOML config file of `pitr coordinator`. Every key
// is optional; flags override it. Durations are strings ("1s", "24h").
type coordinatorFile struct {
	PD             []string `toml:"pd"`
	ID             string   `toml:"id"`
	HTTP           string   `toml:"http"`
	LogLevel       string   `toml:"log-level"`
	TickInterval   duration `toml:"tick-interval"`
	PollTimeout    duration `toml:"poll-timeout"`
	SafePointTTL   duration `toml:"safepoint-ttl"`
	SessionTTL     duration `toml:"session-ttl"`
	MaxSlow        int      `toml:"max-slow"`
	ConnectTimeout duration `toml:"connect-timeout"`
	// ResolveLocksAfter: resolve dead transactions' locks in ranges whose
	// checkpoint lags more than this ("60s" by default; negative: off).
	ResolveLocksAfter duration `toml:"resolve-locks-after"`
	// SnapshotInterval: take a snapshot backup of each running task when
	// its newest one is older than this ("0s", the default: off).
	SnapshotInterval duration `toml:"snapshot-interval"`
	// Keep, KeepSnapshots, RetentionInterval: the retention policy
	// (coordinator.Config): truncate each task's log to now − keep ("7d";
	// "0s", the default: keep everything), never past the keep-snapshots-th
	// newest snapshot, every retention-interval ("1h").
	Keep              duration `toml:"keep"`
	KeepSnapshots     int      `toml:"keep-snapshots"`
	RetentionInterval duration `toml:"retention-interval"`
	// Compaction (on unless false), CompactionRateLimit, CompactionConcurrency,
	// CompactionFileTarget ("128MiB"), CompactionGrace ("1h"): the
	// compaction of each task's log in the same pass (pitr compact's
	// --file-target and --grace).
	Compaction            *bool    `toml:"compaction"`
	CompactionRateLimit   size     `toml:"compaction-ratelimit"`
	CompactionConcurrency int      `toml:"compaction-concurrency"`
	CompactionFileTarget  size     `toml:"compaction-file-target"`
	CompactionGrace       duration `toml:"compaction-grace"`
	// CompactionSealIdle ("10m"): a store's newest chain is compacted too
	// once idle this long (pitr compact's --seal-idle).
	CompactionSealIdle duration `toml:"compaction-seal-idle"`
	// Security: TLS to the cluster and to the agents.
	Security securityFile `toml:"security"`
}

// coordinatorOptions is what `pitr coordinator` runs with, after defaults,
// the file and the flags.
type coordinatorOptions struct {
	configPath string
	logLevel   string
	tls        tlsFlags
	cfg        coordinator.Config
}

func newCoordinatorCmd() *cobra.Command {
	var o coordinatorOptions
	var pd, httpAddr, id string
	var tick, ttl time.Duration
	c := &cobra.Command{
		Use:   "coordinator --pd ADDRS [--config coordinator.toml]",
		Short: "Run a coordinator (one is elected leader and advances the global checkpoint)",
		Long: `Run a coordinator. Any number may run; one is elected through PD's etcd.
The leader polls every agent each tick, computes each task's global
checkpoint, stores it in etcd (fenced by its election term) and in the
task's storage, and holds PD's GC safepoint "pitr-<task>" at it. Another
coordinator takes over when the leader dies or is partitioned away.

Serves /metrics and /healthz on --http. Settings come from defaults, then
the TOML file (--config), then flags. SIGINT/SIGTERM resign leadership and
stop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if err := loadCoordinatorOptions(&o, f.Changed, pd, httpAddr, id, tick, ttl); err != nil {
				return err
			}
			return runCoordinator(cmd.Context(), cmd.ErrOrStderr(), &o)
		},
	}
	f := c.Flags()
	f.StringVar(&pd, "pd", "", "PD addresses, comma separated")
	f.StringVar(&o.configPath, "config", "", "coordinator TOML config file")
	f.StringVar(&httpAddr, "http", coordinator.DefaultHTTPAddr, "/metrics and /healthz listen address (- disables)")
	f.StringVar(&id, "id", "", "name in the election (default host-pid)")
	f.DurationVar(&tick, "tick", coordinator.DefaultTickInterval, "time between checkpoint computations")
	f.DurationVar(&ttl, "safepoint-ttl", coordinator.DefaultSafePointTTL, "TTL of the PD GC safepoint held per task")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	o.tls.register(f)
	return c
}

// loadCoordinatorOptions applies defaults → file → flags (only those set) →
// Validate.
func loadCoordinatorOptions(o *coordinatorOptions, changed func(string) bool, pd, httpAddr, id string, tick, ttl time.Duration) error {
	cfg := &o.cfg
	var sec *securityFile
	if o.configPath != "" {
		var file coordinatorFile
		if err := decodeConfigFile(o.configPath, &file); err != nil {
			return err
		}
		sec = &file.Security
		if len(file.Security.CertAllowedCN) > 0 {
			return cli.Usagef("--config %s: security.cert-allowed-cn is an agent setting (the coordinator serves no gRPC)", o.configPath)
		}
		cfg.PDAddrs, cfg.ID, cfg.HTTPAddr = file.PD, file.ID, file.HTTP
		cfg.TickInterval, cfg.PollTimeout = file.TickInterval.Duration, file.PollTimeout.Duration
		cfg.SafePointTTL, cfg.SessionTTL = file.SafePointTTL.Duration, file.SessionTTL.Duration
		cfg.MaxSlow, cfg.ConnectTimeout = file.MaxSlow, file.ConnectTimeout.Duration
		cfg.ResolveLocksAfter = file.ResolveLocksAfter.Duration
		cfg.SnapshotInterval = file.SnapshotInterval.Duration
		if cfg.SnapshotInterval < 0 {
			return cli.Usagef("--config %s: snapshot-interval must not be negative", o.configPath)
		}
		cfg.Keep, cfg.KeepSnapshots, cfg.RetentionInterval = file.Keep.Duration, file.KeepSnapshots, file.RetentionInterval.Duration
		cfg.NoCompaction = file.Compaction != nil && !*file.Compaction
		cfg.CompactRateLimit, cfg.CompactConcurrency = file.CompactionRateLimit.n, file.CompactionConcurrency
		cfg.CompactFileTarget, cfg.CompactGrace = file.CompactionFileTarget.n, file.CompactionGrace.Duration
		cfg.CompactSealIdle = file.CompactionSealIdle.Duration
		if cfg.Keep < 0 || cfg.KeepSnapshots < 0 || cfg.RetentionInterval < 0 || cfg.CompactRateLimit < 0 || cfg.CompactConcurrency < 0 ||
			cfg.CompactFileTarget < 0 || cfg.CompactGrace < 0 || cfg.CompactSealIdle < 0 {
			return cli.Usagef("--config %s: keep, keep-snapshots, retention-interval and the compaction settings must not be negative", o.configPath)
		}
		if file.LogLevel != "" && !changed("log-level") {
			o.logLevel = file.LogLevel
		}
	}
	if changed("pd") || len(cfg.PDAddrs) == 0 {
		cfg.PDAddrs = splitAddrs(pd)
	}
	if changed("http") || cfg.HTTPAddr == "" {
		cfg.HTTPAddr = httpAddr
	}
	cfg.TLS = o.tls.get(sec, changed)
	if changed("id") {
		cfg.ID = id
	}
	if changed("tick") {
		cfg.TickInterval = tick
	}
	if changed("safepoint-ttl") {
		cfg.SafePointTTL = ttl
	}
	if hclog.LevelFromString(o.logLevel) == hclog.NoLevel {
		return cli.Usagef("--log-level %q is not one of trace, debug, info, warn, error", o.logLevel)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return cli.Usagef("%v", err)
	}
	return nil
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// runCoordinator campaigns and leads until ctx ends (SIGINT/SIGTERM), then
// resigns.
func runCoordinator(ctx context.Context, stderr io.Writer, o *coordinatorOptions) error {
	level := hclog.LevelFromString(o.logLevel)
	cli.RouteClientLogs(stderr, level)
	cfg := o.cfg
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: stderr})
	co, err := coordinator.New(cfg)
	switch {
	case errors.Is(err, coordinator.ErrUnavailable):
		return cli.WithExit(cli.ExitUnavailable, err)
	case errors.Is(err, coordinator.ErrConfig):
		return cli.WithExit(cli.ExitUsage, err)
	case err != nil:
		return fmt.Errorf("start coordinator: %w", err)
	}
	defer co.Close()
	return co.Run(ctx)
}
