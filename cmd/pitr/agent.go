package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/cmd/internal/cli"
)

// agentFile is the TOML config file of `pitr agent`. Every key is optional;
// flags override it. Durations are strings
// ("5s"), sizes strings with an optional KiB/MiB/GiB suffix ("256MiB").
type agentFile struct {
	PD                []string `toml:"pd"`
	TiKV              string   `toml:"tikv"`
	DataDir           string   `toml:"data-dir"`
	Listen            string   `toml:"listen"`
	Advertise         string   `toml:"advertise"`
	HTTP              string   `toml:"http"`
	LogLevel          string   `toml:"log-level"`
	FlushInterval     duration `toml:"flush-interval"`
	MemoryBudget      size     `toml:"memory-budget"`
	SpillBudget       size     `toml:"spill-budget"`
	FileTarget        size     `toml:"file-target"`
	PrewriteBudget    size     `toml:"prewrite-budget"`
	UploadConcurrency int      `toml:"upload-concurrency"`
	// UploadRateLimit: bytes per second over every task ("64MiB"; 0 none).
	UploadRateLimit size     `toml:"upload-rate-limit"`
	RegionInterval  duration `toml:"region-interval"`
	ConnectTimeout  duration `toml:"connect-timeout"`
	// Security: TLS to the cluster, and the CNs the Agent service accepts.
	Security securityFile `toml:"security"`
}

type duration struct{ time.Duration }

// UnmarshalText takes a Go duration, or a whole number of days ("7d").
func (d *duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return fmt.Errorf("duration %q: want a whole number of days like 7d, or a Go duration like 36h", s)
		}
		d.Duration = time.Duration(days) * 24 * time.Hour
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

type size struct{ n int64 }

func (s *size) UnmarshalText(b []byte) error {
	v, err := cli.ParseSize(string(b))
	s.n = v
	return err
}

// agentOptions is what `pitr agent` runs with, after defaults, the file and
// the flags.
type agentOptions struct {
	configPath string
	logLevel   string
	tls        tlsFlags
	uploadRate string
	advertise  string // --advertise; set only when the flag is given
	cfg        agent.Config
	drain      time.Duration // bound on the final flush at shutdown
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
	var pd, tikv, dataDir, listen, httpAddr string
	c := &cobra.Command{
		Use:   "agent --pd ADDRS --tikv ADDR [--config agent.toml]",
		Short: "Run the capture agent beside one TiKV store",
		Long: `Run the capture agent beside one TiKV store: it captures every committed
change of the regions the store leads, for every running task, into the
task's storage, and serves the Agent gRPC service the coordinator polls
(--listen) and /metrics and /healthz (--http).

Settings come from defaults, then the TOML file (--config), then flags.
SIGINT/SIGTERM stop it after a last flush.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if err := loadAgentOptions(&o, func(name string) bool { return f.Changed(name) }, pd, tikv, dataDir, listen, httpAddr); err != nil {
				return err
			}
			return runAgent(cmd.Context(), cmd.ErrOrStderr(), &o)
		},
	}
	f := c.Flags()
	f.StringVar(&pd, "pd", "", "PD addresses, comma separated")
	f.StringVar(&tikv, "tikv", "", "address of the TiKV store this agent sits beside, as PD lists it; auto: the one store on this host (matched by address or hostname)")
	f.StringVar(&o.configPath, "config", "", "agent TOML config file")
	f.StringVar(&dataDir, "data-dir", "", "local spill directory (default: a pitr-agent directory under the system temp dir)")
	f.StringVar(&listen, "listen", agent.DefaultListenAddr, "Agent gRPC service listen address")
	f.StringVar(&o.advertise, "advertise", "", "address registered in etcd for the coordinator to reach the gRPC service, like the pod IP:9595 (default: the listen address)")
	f.StringVar(&httpAddr, "http", agent.DefaultHTTPAddr, "/metrics and /healthz listen address (- disables)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	f.StringVar(&o.uploadRate, "upload-rate-limit", "", "storage bytes per second over every task, like 64MiB (0: none; POST /config changes it while running)")
	o.tls.register(f)
	return c
}

// loadAgentOptions applies defaults → file → flags (only those set) →
// Validate.
func loadAgentOptions(o *agentOptions, changed func(string) bool, pd, tikv, dataDir, listen, httpAddr string) error {
	o.drain = 30 * time.Second
	cfg := &o.cfg
	var sec *securityFile
	if o.configPath != "" {
		var file agentFile
		if err := decodeConfigFile(o.configPath, &file); err != nil {
			return err
		}
		sec = &file.Security
		cfg.AllowedCN = file.Security.CertAllowedCN
		cfg.PDAddrs, cfg.TiKVAddr, cfg.DataDir = file.PD, file.TiKV, file.DataDir
		cfg.ListenAddr, cfg.AdvertiseAddr, cfg.HTTPAddr = file.Listen, file.Advertise, file.HTTP
		cfg.FlushInterval, cfg.RegionInterval, cfg.ConnectTimeout = file.FlushInterval.Duration, file.RegionInterval.Duration, file.ConnectTimeout.Duration
		cfg.MemoryBudget, cfg.SpillBudget, cfg.FileTarget = file.MemoryBudget.n, file.SpillBudget.n, file.FileTarget.n
		cfg.UploadConcurrency = file.UploadConcurrency
		cfg.UploadRateLimit = file.UploadRateLimit.n
		cfg.PrewriteBudget = file.PrewriteBudget.n
		if file.LogLevel != "" && !changed("log-level") {
			o.logLevel = file.LogLevel
		}
	}
	if changed("pd") || len(cfg.PDAddrs) == 0 {
		cfg.PDAddrs = nil
		for _, a := range strings.Split(pd, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.PDAddrs = append(cfg.PDAddrs, a)
			}
		}
	}
	cfg.TLS = o.tls.get(sec, changed)
	if changed("upload-rate-limit") {
		n, err := cli.ParseSize(o.uploadRate)
		if err != nil || n < 0 {
			return cli.Usagef("--upload-rate-limit %q: want bytes per second, like 64MiB (0: none)", o.uploadRate)
		}
		cfg.UploadRateLimit = n
	}
	if changed("tikv") || cfg.TiKVAddr == "" {
		cfg.TiKVAddr = tikv
	}
	if changed("data-dir") || cfg.DataDir == "" {
		cfg.DataDir = dataDir
	}
	if changed("listen") || cfg.ListenAddr == "" {
		cfg.ListenAddr = listen
	}
	if changed("advertise") {
		cfg.AdvertiseAddr = o.advertise
	}
	if changed("http") || cfg.HTTPAddr == "" {
		cfg.HTTPAddr = httpAddr
	}
	if cfg.DataDir == "" && cfg.TiKVAddr != "" {
		cfg.DataDir = filepath.Join(os.TempDir(), "pitr-agent-"+strings.NewReplacer(":", "_", "/", "_").Replace(cfg.TiKVAddr))
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

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// decodeConfigFile decodes a TOML config file into v. A syntax error or a
// key v does not know is a usage error (exit 2), in one line.
func decodeConfigFile(path string, v any) error {
	md, err := toml.DecodeFile(path, v)
	if err != nil {
		return cli.Usagef("--config %s: %v", path, oneLine(err))
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return cli.Usagef("--config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	return nil
}

// runAgent runs the agent until ctx ends (SIGINT/SIGTERM), then flushes once
// more and stops.
func runAgent(ctx context.Context, stderr io.Writer, o *agentOptions) error {
	level := hclog.LevelFromString(o.logLevel)
	log := hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: stderr})
	cli.RouteClientLogs(stderr, level)
	cfg := o.cfg
	cfg.Logger = log
	a, err := agent.New(cfg)
	switch {
	case errors.Is(err, agent.ErrUnavailable):
		return cli.WithExit(cli.ExitUnavailable, err)
	case errors.Is(err, agent.ErrStoreNotFound):
		return cli.WithExit(cli.ExitUsage, fmt.Errorf("%w; check --tikv", err))
	case errors.Is(err, agent.ErrConfig):
		return cli.WithExit(cli.ExitUsage, err)
	case err != nil:
		return err
	}
	defer a.Close()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	log.Info("stopping: flushing once more", "timeout", o.drain)
	dctx, dcancel := context.WithTimeout(context.Background(), o.drain)
	if err := a.Drain(dctx); err != nil {
		log.Warn("final flush", "error", err)
	}
	dcancel()
	cancel()
	return <-done
}
