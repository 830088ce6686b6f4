package testkit

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/certs"
	"github.com/pitr-io/pitr/task"
)

// Options configures StartCluster.
type Options struct {
	// Playground is passed to playground.Start as it is, but for Dir (empty:
	// a fresh directory of the TB) and Logger (nil: errors to stderr).
	// TLSDir turns TLS on for the cluster and every client made here.
	Playground playground.Config
	// Component names the clients to PD (default "pitr-test").
	Component string
	// WithoutKV makes no client-go client, for tests of PD and etcd alone.
	// One cannot be added later: client-go's NewClient rewrites PD client
	// globals that PD clients already running read (a data race).
	WithoutKV bool
}

// Cluster is a running playground and the clients of it, all made through
// connector with the cluster's TLS. Everything stops when the TB ends.
type Cluster struct {
	TB  TB
	Ctx context.Context
	// Log is the components' logger (the playground's, the agents', …).
	Log hclog.Logger
	P   *playground.Playground
	// KV is a client-go client (nil with WithoutKV).
	KV *txnkv.Client
	// Clients are PD and its etcd, checked to answer a read of pitr's root.
	Clients *connector.Clients
	// TLS is what a client presents (zero: plaintext); TLSDir the
	// playground's certificate directory.
	TLS    connector.TLS
	TLSDir string

	component string
}

// StartCluster starts a playground and connects to it; a failure is fatal.
func StartCluster(tb TB, ctx context.Context, o Options) *Cluster {
	tb.Helper()
	cfg := o.Playground
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(tb.TempDir(), "cluster")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr})
	}
	c := &Cluster{TB: tb, Ctx: ctx, Log: cfg.Logger, TLSDir: cfg.TLSDir, component: o.Component}
	if c.component == "" {
		c.component = "pitr-test"
	}
	var err error
	if c.P, err = playground.Start(ctx, cfg); err != nil {
		tb.Fatalf("start playground: %v", err)
	}
	tb.Cleanup(func() { _ = c.P.Close() })
	if f := c.P.ClientTLS(); f.CA != "" {
		c.TLS = connector.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	// client-go first: it rewrites pd/client globals that PD clients read.
	if !o.WithoutKV {
		c.KV = c.NewKV()
	}
	if c.Clients, err = connector.Connect(ctx, c.Config(c.component), task.Root); err != nil {
		tb.Fatalf("connect to PD and etcd: %v", err)
	}
	tb.Cleanup(c.Clients.Close)
	// The first TSO of a fresh PD client may fail once; connector retries it.
	if _, err := connector.GetTS(ctx, c.Clients.PD); err != nil {
		tb.Fatalf("first TSO: %v", err)
	}
	return c
}

// Config is how a component reaches the cluster: its PD address and TLS.
func (c *Cluster) Config(component string) connector.Config {
	return connector.Config{PDAddrs: []string{c.P.PDAddr()}, TLS: c.TLS, Timeout: 10 * time.Second, Component: component}
}

// AgentTLS is the TLS of a process that serves as well as dials (an agent):
// a certificate with both usages, the playground's server certificate.
// Zero when TLS is off.
func (c *Cluster) AgentTLS() connector.TLS {
	if !c.TLS.Enabled() {
		return connector.TLS{}
	}
	p := certs.PathsIn(c.TLSDir)
	return connector.TLS{CA: p.CA, Cert: p.Cert, Key: p.Key}
}

// NewKV makes another client-go client; it closes when the TB ends.
func (c *Cluster) NewKV() *txnkv.Client {
	c.TB.Helper()
	ctx, cancel := context.WithTimeout(c.Ctx, 20*time.Second)
	defer cancel()
	kv, err := connector.KV(ctx, c.Config(c.component))
	if err != nil {
		c.TB.Fatalf("connect client-go: %v", err)
	}
	c.TB.Cleanup(func() { _ = kv.Close() })
	return kv
}

// TS is a fresh timestamp from PD.
func (c *Cluster) TS() uint64 {
	c.TB.Helper()
	ts, err := connector.GetTS(c.Ctx, c.Clients.PD)
	if err != nil {
		c.TB.Fatalf("get a timestamp: %v", err)
	}
	return ts
}

// ReadAll reads the cluster's keys at ts (see ReadAll).
func (c *Cluster) ReadAll(ts uint64, bounds ...string) map[string][]byte {
	c.TB.Helper()
	m, err := ReadAll(c.KV, ts, bounds...)
	if err != nil {
		c.TB.Fatalf("read at %d: %v", ts, err)
	}
	return m
}
