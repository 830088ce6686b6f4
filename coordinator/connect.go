package coordinator

import (
	"context"

	pd "github.com/tikv/pd/client"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/task"
)

// PD is what the coordinator needs of PD (task.PD).
type PD = task.PD

var _ PD = (pd.Client)(nil)

// ErrUnavailable marks a PD or etcd that could not be reached in time
// (connector.ErrUnavailable: the same error everywhere).
var ErrUnavailable = connector.ErrUnavailable

// Clients are the connections to one cluster's PD and its etcd.
type Clients = connector.Clients

// Connect connects to PD and its etcd, checking that etcd answers a read
// of pitr's root.
func Connect(ctx context.Context, c connector.Config) (*Clients, error) {
	return connector.Connect(ctx, c, task.Root)
}

// ConnectEtcd connects to PD's etcd and checks that it answers a read of
// pitr's root.
func ConnectEtcd(ctx context.Context, c connector.Config) (*clientv3.Client, error) {
	return connector.Etcd(ctx, c, task.Root)
}

// connectLocks makes the lock resolver on PDAddrs when lock resolution is
// on and none was given (first: see connector.KV).
func (c *Coordinator) connectLocks() error {
	needLocks := c.cfg.ResolveLocksAfter > 0 && c.cfg.Locks == nil
	needSnap := c.cfg.SnapshotInterval > 0 && c.cfg.KV == nil
	if !needLocks && !needSnap {
		return nil
	}
	if len(c.cfg.PDAddrs) == 0 {
		c.log.Warn("lock resolution and scheduled snapshots are off: no client-go client given and no PD addresses to make one")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ConnectTimeout)
	defer cancel()
	kv, err := connector.KV(ctx, c.connCfg())
	if err != nil {
		return err
	}
	c.kv = kv
	if needLocks {
		c.cfg.Locks = NewLockResolver(kv.KVStore)
	}
	if needSnap {
		c.cfg.KV = kv.KVStore
	}
	return nil
}

// connCfg is how the coordinator reaches its cluster.
func (c *Coordinator) connCfg() connector.Config {
	return connector.Config{PDAddrs: c.cfg.PDAddrs, TLS: c.cfg.TLS, Timeout: c.cfg.ConnectTimeout, Component: "pitr-coordinator"}
}

// GetTS returns a timestamp from PD (connector.GetTS).
func GetTS(ctx context.Context, p PD) (uint64, error) { return connector.GetTS(ctx, p) }
