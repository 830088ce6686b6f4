// Package connector is pitr's one way to a cluster: PD, PD's etcd,
// client-go and TiKV's gRPC and HTTP ports, with one TLS set-up, one
// first-TSO retry and one ErrUnavailable. The agent, the coordinator,
// restore and the CLI connect through it.
//
// TLS follows BR and TiCDC: --ca, --cert and --key name PEM files, the same
// on every connection (TiKV and PD with security configured require a
// client certificate signed by the cluster's CA). A rotated certificate
// and key are used without a restart (see TLS.ClientConfig and
// ServerConfig); the PD client reads them when it connects.
package connector

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tikv/client-go/v2/config"
	"github.com/tikv/client-go/v2/txnkv"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/keyspace"
)

// ErrUnavailable marks a PD, etcd or store that could not be reached in
// time, or that refused the connection (a TLS mismatch included).
var ErrUnavailable = errors.New("unavailable")

// Config says how to reach one cluster.
type Config struct {
	// PDAddrs are PD's client URLs (host:port, or with a scheme); PD's
	// etcd answers on the same addresses.
	PDAddrs []string
	// TLS is the cluster's TLS set-up (zero: plaintext).
	TLS TLS
	// Timeout bounds each connection attempt (default 10s).
	Timeout time.Duration
	// Component names the caller to PD (pitr-agent, pitr-cli, …).
	Component string
}

func (c Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 10 * time.Second
	}
	return c.Timeout
}

func (c Config) addrs() string { return strings.Join(c.PDAddrs, ",") }

// etcdEndpoints returns the PD addresses with the scheme TLS calls for:
// etcd's client picks TLS from the scheme of each endpoint.
func (c Config) etcdEndpoints() []string {
	out := make([]string, len(c.PDAddrs))
	for i, a := range c.PDAddrs {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "http://"), "https://")
		out[i] = c.TLS.Scheme() + "://" + a
	}
	return out
}

// pdAddrs returns the PD addresses with the scheme TLS calls for (the PD
// client dials TLS for https:// URLs when it has a security option).
func (c Config) pdAddrs() []string { return c.etcdEndpoints() }

// PD connects a PD client, waiting at most Timeout.
func PD(ctx context.Context, c Config) (pd.Client, error) {
	if err := c.TLS.Validate(); err != nil {
		return nil, err
	}
	timeout := c.timeout()
	retries := max(int(timeout/time.Second), 1)
	sec := pd.SecurityOption{CAPath: c.TLS.CA, CertPath: c.TLS.Cert, KeyPath: c.TLS.Key}
	return openWithin(ctx, timeout, "connect to PD "+c.addrs(), func(octx context.Context) (pd.Client, error) {
		return pd.NewClientWithContext(octx, caller.Component(c.Component), c.pdAddrs(), sec,
			opt.WithMaxErrorRetry(retries), opt.WithInitMetricsOption(false),
			opt.WithCustomTimeoutOption(min(timeout, 5*time.Second)))
	}, func(p pd.Client) { p.Close() })
}

// Etcd connects to PD's etcd and checks that it answers a read of probeKey
// (a count-only Get) within Timeout.
func Etcd(ctx context.Context, c Config, probeKey string) (*clientv3.Client, error) {
	tc, err := c.TLS.ClientConfig()
	if err != nil {
		return nil, err
	}
	timeout := c.timeout()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.etcdEndpoints(),
		DialTimeout: timeout,
		TLS:         tc,
		Logger:      zap.NewNop(),
		Context:     context.Background(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: connect to etcd %s: %v", ErrUnavailable, c.addrs(), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(cctx, probeKey, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("%w: etcd at %s does not answer: %v", ErrUnavailable, c.addrs(), err)
	}
	return cli, nil
}

// kvMu serializes client-go's set-up: NewClient reads its TLS from the
// package-global config, which KV sets first.
var kvMu sync.Mutex

// KV opens a client-go transaction client, waiting at most Timeout. Make
// it before any other PD client of the process: client-go's NewClient
// sets the PD client's package globals, racing with PD clients already
// running. client-go keeps one TLS set-up per process (its global
// config): every KV of a process must use the same TLS.
func KV(ctx context.Context, c Config) (*txnkv.Client, error) {
	if err := c.TLS.Validate(); err != nil {
		return nil, err
	}
	timeout := c.timeout()
	return openWithin(ctx, timeout, "connect client-go to PD "+c.addrs(), func(context.Context) (*txnkv.Client, error) {
		// NewClient sometimes fails at once (a cancelled RPC while its PD
		// client starts, seen with several clusters in one process): a
		// failure that comes quickly is retried twice; one that took its
		// time (PD does not answer) is not.
		var kv *txnkv.Client
		var err error
		for attempt := 0; ; attempt++ {
			began := time.Now()
			kvMu.Lock()
			config.UpdateGlobal(func(g *config.Config) {
				g.Security = config.NewSecurity(c.TLS.CA, c.TLS.Cert, c.TLS.Key, nil)
			})
			kv, err = txnkv.NewClient(c.pdAddrs())
			kvMu.Unlock()
			if err == nil {
				break
			}
			if attempt == 2 || time.Since(began) > 2*time.Second {
				return nil, err
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The first TSO: client-go's PD client may fail it while its
		// service discovery settles.
		deadline := time.Now().Add(timeout)
		for {
			if _, err = kv.CurrentTimestamp("global"); err == nil {
				return kv, nil
			}
			if time.Now().After(deadline) {
				_ = kv.Close()
				return nil, fmt.Errorf("first timestamp: %w", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}, func(k *txnkv.Client) { _ = k.Close() })
}

// Dial makes a gRPC client connection to a TiKV store or an agent with the
// TLS set-up; opts come after the credentials.
func Dial(addr string, t TLS, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	cred, err := t.DialOption()
	if err != nil {
		return nil, err
	}
	c, err := grpc.NewClient(addr, append([]grpc.DialOption{cred}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// HTTPClient returns a client for PD's HTTP API and TiKV's status API with
// the TLS set-up (use t.Scheme() in the URLs).
func HTTPClient(t TLS, timeout time.Duration) (*http.Client, error) {
	tc, err := t.ClientConfig()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}

// URL returns addr as a URL of the TLS set-up's scheme, keeping a scheme
// addr already has.
func URL(t TLS, addr, path string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/") + path
	}
	return t.Scheme() + "://" + addr + path
}

// Clients are the connections to one cluster's PD and its etcd.
type Clients struct {
	Etcd *clientv3.Client
	PD   pd.Client
}

// Close closes both clients.
func (c *Clients) Close() {
	if c.Etcd != nil {
		_ = c.Etcd.Close()
	}
	if c.PD != nil {
		c.PD.Close()
	}
}

// Connect connects to PD and its etcd (probeKey: see Etcd).
func Connect(ctx context.Context, c Config, probeKey string) (*Clients, error) {
	p, err := PD(ctx, c)
	if err != nil {
		return nil, err
	}
	e, err := Etcd(ctx, c, probeKey)
	if err != nil {
		p.Close()
		return nil, err
	}
	return &Clients{Etcd: e, PD: p}, nil
}

// TSO allocates timestamps (a pd.Client is one).
type TSO interface {
	GetTS(ctx context.Context) (physical, logical int64, err error)
}

// GetTS returns a timestamp from PD. It retries a few times: the pinned
// PD client may fail its very first GetTS after NewClient (Canceled while
// its service discovery settles).
func GetTS(ctx context.Context, p TSO) (uint64, error) {
	var err error
	delay := 50 * time.Millisecond
	for attempt := 0; attempt < 8; attempt++ {
		var phys, logical int64
		phys, logical, err = p.GetTS(ctx)
		if err == nil {
			return keyspace.Compose(phys, logical), nil
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
	return 0, fmt.Errorf("get ts from PD: %w", err)
}

// openWithin runs open (which has no context of its own to honour) and
// waits for it at most timeout (plus a second) or until ctx ends; a client
// that arrives after the wait gave up is closed. Failures are
// ErrUnavailable.
func openWithin[T any](ctx context.Context, timeout time.Duration, what string, open func(octx context.Context) (T, error), closeIt func(T)) (T, error) {
	type result struct {
		c   T
		err error
	}
	// octx lives as long as the client (the PD client's loops run under
	// it), and is cancelled only when the caller gives up on it, so a
	// connection attempt abandoned stops at once instead of running on
	// with its goroutines (a test's goleak check saw them).
	octx, abandon := context.WithCancel(context.Background())
	ch := make(chan result, 1)
	go func() {
		c, err := open(octx)
		ch <- result{c, err}
	}()
	t := time.NewTimer(timeout + time.Second)
	defer t.Stop()
	var zero T
	select {
	case r := <-ch:
		if r.err != nil {
			abandon()
			return zero, fmt.Errorf("%w: %s: %v", ErrUnavailable, what, r.err)
		}
		// The client keeps octx until it is closed (Close stops what
		// runs under it); octx is never cancelled then.
		_ = abandon
		return r.c, nil
	case <-t.C:
	case <-ctx.Done():
	}
	abandon()
	go func() {
		if r := <-ch; r.err == nil {
			closeIt(r.c)
		}
	}()
	return zero, fmt.Errorf("%w: %s: no answer within %s", ErrUnavailable, what, timeout)
}
