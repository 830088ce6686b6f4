package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/connector"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

// EtcdAgents finds the agents registered in etcd (task.AgentPrefix) and
// sends them ranges. An agent that is not registered, or cannot be
// reached, is not there (ok false): the command scans the range itself.
type EtcdAgents struct {
	tls  connector.TLS
	etcd *clientv3.Client

	mu     sync.Mutex
	addrs  map[uint64]string
	conns  map[string]*grpc.ClientConn
	readAt time.Time       // when addrs were read
	had    map[uint64]bool // stores that had an agent at the first read
}

// errAgentGone: a store's agent went away during the backup.
var errAgentGone = errors.New("agent gone")

// refreshEvery bounds how often the agents are read again after one could
// not be reached (a restarted agent registers a new address).
const refreshEvery = 500 * time.Millisecond

// NewEtcdAgents reads the registered agents once.
func NewEtcdAgents(ctx context.Context, etcd *clientv3.Client, tls connector.TLS) (*EtcdAgents, error) {
	a := &EtcdAgents{tls: tls, etcd: etcd, conns: map[string]*grpc.ClientConn{}, had: map[uint64]bool{}}
	if err := a.read(ctx); err != nil {
		return nil, fmt.Errorf("%w: %v", connector.ErrUnavailable, err)
	}
	for id := range a.addrs {
		a.had[id] = true
	}
	return a, nil
}

func (a *EtcdAgents) read(ctx context.Context) error {
	recs, err := task.ListAgents(ctx, a.etcd)
	if err != nil {
		return err
	}
	addrs := map[uint64]string{}
	for _, r := range recs {
		addrs[r.GetStoreId()] = r.GetAddr()
	}
	a.mu.Lock()
	a.addrs, a.readAt = addrs, time.Now()
	a.mu.Unlock()
	return nil
}

// refresh reads the agents again unless that was done recently; it
// reports whether storeID's address changed.
func (a *EtcdAgents) refresh(ctx context.Context, storeID uint64, old string) bool {
	a.mu.Lock()
	recent := time.Since(a.readAt) < refreshEvery
	a.mu.Unlock()
	if !recent {
		_ = a.read(ctx) // unreachable etcd: keep what we have
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	addr, ok := a.addrs[storeID]
	return ok && addr != old
}

// Stores is how many stores have an agent.
func (a *EtcdAgents) Stores() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.addrs)
}

// BackupRange implements Agents. An agent that cannot be reached is looked
// up again (a restarted one has a new address) and tried once more; then
// its error fails the attempt. A store without an agent, or with one too
// old to serve BackupRange, is not there (ok false).
func (a *EtcdAgents) BackupRange(ctx context.Context, storeID uint64, req *pitrpb.BackupRangeRequest) (*pitrpb.BackupRangeResponse, bool, error) {
	for try := 0; ; try++ {
		c, addr, ok := a.conn(storeID)
		if !ok {
			a.mu.Lock()
			had := a.had[storeID]
			a.mu.Unlock()
			if had && try == 0 && a.refresh(ctx, storeID, "") {
				continue
			}
			if had {
				// Its agent was there and is gone (killed, restarting):
				// a failed attempt, as below.
				return nil, true, fmt.Errorf("%w: the agent of store %d is not registered any more", errAgentGone, storeID)
			}
			return nil, false, nil
		}
		resp, err := pitrpb.NewAgentClient(c).BackupRange(ctx, req)
		switch status.Code(err) {
		case codes.Unavailable:
			if try == 0 && a.refresh(ctx, storeID, addr) {
				continue
			}
			// Gone, or restarting: a failed attempt, which the backup
			// retries with backoff (by then a restarted agent has
			// registered); its last attempt scans in this process.
			return nil, true, err
		case codes.Unimplemented:
			return nil, false, nil // an older agent
		}
		return resp, true, err
	}
}

func (a *EtcdAgents) conn(storeID uint64) (*grpc.ClientConn, string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	addr, ok := a.addrs[storeID]
	if !ok {
		return nil, "", false
	}
	if c := a.conns[addr]; c != nil {
		return c, addr, true
	}
	c, err := connector.Dial(addr, a.tls)
	if err != nil {
		return nil, "", false
	}
	a.conns[addr] = c
	return c, addr, true
}

// Close closes the connections.
func (a *EtcdAgents) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, c := range a.conns {
		_ = c.Close()
		delete(a.conns, k)
	}
}
