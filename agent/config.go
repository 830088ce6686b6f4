package agent

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/flush"
)

// Defaults of the zero fields of Config (flush.Settings has its own).
const (
	DefaultListenAddr     = "127.0.0.1:9595"
	DefaultHTTPAddr       = "127.0.0.1:9596"
	DefaultFlushInterval  = 5 * time.Second
	DefaultRegionInterval = 10 * time.Second
	DefaultBlockedGrace   = time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultLeaseTTL       = 10 * time.Second
	DefaultPrewriteBudget = 256 << 20
)

// Config configures an Agent. Zero fields take the defaults above; New calls
// Validate.
type Config struct {
	// PDAddrs are PD's client URLs (host:port or http://host:port). PD's etcd
	// is reached on the same addresses.
	PDAddrs []string
	// TLS is the cluster's TLS set-up (zero: plaintext): used for PD, etcd
	// and TiKV, and to serve the Agent gRPC service, which then requires a
	// client certificate signed by the same CA.
	TLS connector.TLS
	// AllowedCN, when not empty, are the certificate common names the
	// Agent gRPC service accepts (TiKV's security.cert-allowed-cn), e.g.
	// the coordinators'.
	AllowedCN []string
	// LocalNames, when set, are this host's names and addresses as
	// TiKVAuto matches them (tests); nil: the hostname and the addresses
	// of the host's interfaces.
	LocalNames []string
	// TiKVAddr is the address of the store this agent sits beside, as PD
	// lists it; the agent finds its store id with it. TiKVAuto finds the
	// store on this host instead (autostore.go).
	TiKVAddr string
	// DataDir holds the spill runs of every task (DataDir/<task>/spill).
	DataDir string
	// ListenAddr serves the Agent gRPC service (":0" picks a port);
	// AdvertiseAddr is what the agent registers in etcd (default: the
	// listener's address).
	ListenAddr    string
	AdvertiseAddr string
	// HTTPAddr serves /metrics and /healthz; "-" disables it.
	HTTPAddr string

	// FlushInterval is the time between flush cuts; a cut also happens when
	// a task's buffer reaches FileTarget.
	FlushInterval time.Duration
	// Settings bound each task's buffer in memory and on disk, size its
	// data files and its concurrent uploads (package flush's knobs).
	flush.Settings
	// PrewriteBudget bounds the pending prewrites (key, value and old value
	// of transactions not yet committed) the agent holds for all its tasks.
	// Above it the region holding the most is subscribed again from its
	// checkpoint (TiKV's incremental scan sends its locks again); a region
	// whose open transactions alone exceed it after that is kept and
	// reported as over the budget (one region at a time). < 0: no limit.
	PrewriteBudget int64
	// UploadRateLimit bounds the bytes per second the agent sends to (and
	// reads from) storage, over every task together (0: none), so a
	// backlog after an outage does not saturate the store's network.
	// POST /config changes it while running.
	UploadRateLimit int64
	// RegionInterval is how often regions are re-read from PD when nothing
	// happens (config key region-interval); TiKV errors (NotLeader,
	// EpochNotMatch, RegionNotFound) and broken streams re-read them at once.
	// A region whose leader moved to this store is found by the next
	// periodic read.
	RegionInterval time.Duration
	// BlockedGrace is how long a full flusher may hold up the stream reader
	// before the regions whose rows wait are released (and subscribed again
	// from their checkpoints when there is room), so the agent never holds
	// TiKV's store-wide sink quota.
	BlockedGrace time.Duration
	// ConnectTimeout bounds the wait for PD at start.
	ConnectTimeout time.Duration
	// LeaseTTL is the TTL of the agent's registration in etcd.
	LeaseTTL time.Duration

	Logger hclog.Logger
	// Registerer receives the agent's metrics (and its flushers'); nil: a
	// fresh registry. Gatherer serves /metrics; nil: the Registerer when it
	// is also a Gatherer.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// SetDefaults fills the zero fields.
func (c *Config) SetDefaults() {
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	c.Settings.SetDefaults()
	if c.PrewriteBudget == 0 {
		c.PrewriteBudget = DefaultPrewriteBudget
	}
	if c.RegionInterval == 0 {
		c.RegionInterval = DefaultRegionInterval
	}
	if c.BlockedGrace == 0 {
		c.BlockedGrace = DefaultBlockedGrace
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// ErrConfig marks configuration mistakes (Validate's errors).
var ErrConfig = errors.New("invalid agent config")

// Validate reports the first invalid field, after defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if err := c.TLS.Validate(); err != nil {
		return bad("%v", err)
	}
	if len(c.AllowedCN) > 0 && !c.TLS.Enabled() {
		return bad("allowed CNs need TLS (--ca, --cert, --key)")
	}
	if len(c.PDAddrs) == 0 {
		return bad("PD addresses are required (--pd)")
	}
	for _, a := range c.PDAddrs {
		if strings.TrimSpace(a) == "" {
			return bad("empty PD address in %q", strings.Join(c.PDAddrs, ","))
		}
	}
	if c.TiKVAddr == "" {
		return bad("the TiKV address is required (--tikv)")
	}
	if _, _, err := net.SplitHostPort(c.TiKVAddr); err != nil && c.TiKVAddr != TiKVAuto {
		return bad("TiKV address %q: want host:port, or %q", c.TiKVAddr, TiKVAuto)
	}
	if c.DataDir == "" {
		return bad("a data dir is required (--data-dir)")
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return bad("listen address %q: want host:port", c.ListenAddr)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := net.SplitHostPort(c.AdvertiseAddr)
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
			return bad("advertise address %q: want host:port the coordinator can dial (not a wildcard)", c.AdvertiseAddr)
		}
	}
	if c.HTTPAddr != "-" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("http address %q: want host:port (or - to disable)", c.HTTPAddr)
		}
	}
	switch {
	case c.FlushInterval < 10*time.Millisecond:
		return bad("flush interval %s is too short (at least 10ms)", c.FlushInterval)
	case c.MemoryBudget < 1<<20:
		return bad("memory budget %d is below 1 MiB", c.MemoryBudget)
	case c.PrewriteBudget >= 0 && c.PrewriteBudget < 64<<10:
		return bad("prewrite budget %d is below 64 KiB", c.PrewriteBudget)
	case c.FileTarget < 1<<10:
		return bad("file target %d is below 1 KiB", c.FileTarget)
	case c.UploadRateLimit < 0:
		return bad("upload rate limit %d: want bytes per second, or 0 for none", c.UploadRateLimit)
	case c.UploadConcurrency < 1:
		return bad("upload concurrency must be at least 1")
	case c.RegionInterval < 10*time.Millisecond:
		return bad("region interval %s is too short", c.RegionInterval)
	case c.BlockedGrace <= 0:
		return bad("blocked grace must be positive")
	case c.ConnectTimeout <= 0:
		return bad("connect timeout must be positive")
	case c.LeaseTTL < 2*time.Second:
		return bad("lease TTL %s is below 2s", c.LeaseTTL)
	}
	return nil
}
