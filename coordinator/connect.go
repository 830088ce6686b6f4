package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tikv/client-go/v2/txnkv"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/task"
)

// PD is what the coordinator and the task commands need of PD. A
// github.com/tikv/pd/client Client is one.
type PD interface {
	// UpdateServiceGCSafePoint sets (ttl > 0) or removes (ttl <= 0) a
	// service safepoint and returns the minimum service safepoint after the
	// update; a safepoint below that minimum is not stored.
	UpdateServiceGCSafePoint(ctx context.Context, serviceID string, ttl int64, safePoint uint64) (uint64, error)
	// UpdateGCSafePoint with 0 reads the GC safepoint (it only moves forward).
	UpdateGCSafePoint(ctx context.Context, safePoint uint64) (uint64, error)
	// GetTS allocates a timestamp.
	GetTS(ctx context.Context) (physical, logical int64, err error)
	// GetClusterID returns the cluster id.
	GetClusterID(ctx context.Context) uint64
}

var _ PD = (pd.Client)(nil)

// ErrUnavailable marks a PD or etcd that could not be reached in time.
var ErrUnavailable = errors.New("unavailable")

// SafePointID is the PD service safepoint id of a task.
func SafePointID(taskName string) string { return "pitr-" + taskName }

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

// ConnectEtcd connects to PD's etcd and checks it answers within timeout.
func ConnectEtcd(ctx context.Context, addrs []string, timeout time.Duration) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   addrs,
		DialTimeout: timeout,
		Logger:      zap.NewNop(),
		Context:     context.Background(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: connect to etcd %s: %v", ErrUnavailable, strings.Join(addrs, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(cctx, task.Root, clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("%w: etcd at %s does not answer: %v", ErrUnavailable, strings.Join(addrs, ","), err)
	}
	return cli, nil
}

// ConnectPD connects to PD, waiting at most timeout.
func ConnectPD(ctx context.Context, addrs []string, timeout time.Duration, component string) (pd.Client, error) {
	retries := max(int(timeout/time.Second), 1)
	return openWithin(ctx, timeout, "connect to PD "+strings.Join(addrs, ","), func() (pd.Client, error) {
		return pd.NewClientWithContext(context.Background(), caller.Component(component), addrs, pd.SecurityOption{},
			opt.WithMaxErrorRetry(retries), opt.WithInitMetricsOption(false),
			opt.WithCustomTimeoutOption(min(timeout, 5*time.Second)))
	}, func(c pd.Client) { c.Close() })
}

// ConnectKV opens a client-go transaction client on PD, waiting at most
// timeout. Make it before any other PD client of the process: client-go's
// NewClient sets the PD client's package globals, racing with PD clients
// already running.
func ConnectKV(ctx context.Context, addrs []string, timeout time.Duration) (*txnkv.Client, error) {
	return openWithin(ctx, timeout, "connect client-go to PD "+strings.Join(addrs, ","), func() (*txnkv.Client, error) {
		return txnkv.NewClient(addrs)
	}, func(c *txnkv.Client) { _ = c.Close() })
}

// openWithin runs open (which has no context of its own to honour) and
// waits for it at most timeout (plus a second) or until ctx ends; a client
// that arrives after the wait gave up is closed. Failures are
// ErrUnavailable.
func openWithin[T any](ctx context.Context, timeout time.Duration, what string, open func() (T, error), closeIt func(T)) (T, error) {
	type result struct {
		c   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := open()
		ch <- result{c, err}
	}()
	t := time.NewTimer(timeout + time.Second)
	defer t.Stop()
	var zero T
	select {
	case r := <-ch:
		if r.err != nil {
			return zero, fmt.Errorf("%w: %s: %v", ErrUnavailable, what, r.err)
		}
		return r.c, nil
	case <-t.C:
	case <-ctx.Done():
	}
	go func() {
		if r := <-ch; r.err == nil {
			closeIt(r.c)
		}
	}()
	return zero, fmt.Errorf("%w: %s: no answer within %s", ErrUnavailable, what, timeout)
}

// connectLocks makes the lock resolver on PDAddrs when lock resolution is
// on and none was given (first: see ConnectKV).
func (c *Coordinator) connectLocks() error {
	if c.cfg.ResolveLocksAfter <= 0 || c.cfg.Locks != nil {
		return nil
	}
	if len(c.cfg.PDAddrs) == 0 {
		c.log.Warn("lock resolution is off: no lock resolver and no PD addresses to make one")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ConnectTimeout)
	defer cancel()
	kv, err := ConnectKV(ctx, c.cfg.PDAddrs, c.cfg.ConnectTimeout)
	if err != nil {
		return err
	}
	c.kv = kv
	c.cfg.Locks = NewLockResolver(kv.KVStore)
	return nil
}

// Connect connects to PD and its etcd.
func Connect(ctx context.Context, addrs []string, timeout time.Duration, component string) (*Clients, error) {
	p, err := ConnectPD(ctx, addrs, timeout, component)
	if err != nil {
		return nil, err
	}
	e, err := ConnectEtcd(ctx, addrs, timeout)
	if err != nil {
		p.Close()
		return nil, err
	}
	return &Clients{Etcd: e, PD: p}, nil
}

// GetTS returns a timestamp from PD. It retries a Canceled error a few
// times: the pinned PD client may fail its very first GetTS after
// NewClient that way.
func GetTS(ctx context.Context, p PD) (uint64, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
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
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("get ts from PD: %w", err)
}
