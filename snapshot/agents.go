package snapshot

import (
	"context"
	"fmt"
	"sync"

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
	tls connector.TLS

	mu    sync.Mutex
	addrs map[uint64]string
	conns map[string]*grpc.ClientConn
}

// NewEtcdAgents reads the registered agents once.
func NewEtcdAgents(ctx context.Context, etcd *clientv3.Client, tls connector.TLS) (*EtcdAgents, error) {
	recs, err := task.ListAgents(ctx, etcd)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", connector.ErrUnavailable, err)
	}
	a := &EtcdAgents{tls: tls, addrs: map[uint64]string{}, conns: map[string]*grpc.ClientConn{}}
	for _, r := range recs {
		a.addrs[r.GetStoreId()] = r.GetAddr()
	}
	return a, nil
}

// Stores is how many stores have an agent.
func (a *EtcdAgents) Stores() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.addrs)
}

// BackupRange implements Agents.
func (a *EtcdAgents) BackupRange(ctx context.Context, storeID uint64, req *pitrpb.BackupRangeRequest) (*pitrpb.BackupRangeResponse, bool, error) {
	a.mu.Lock()
	addr, ok := a.addrs[storeID]
	var c *grpc.ClientConn
	var err error
	if ok {
		if c = a.conns[addr]; c == nil {
			if c, err = connector.Dial(addr, a.tls); err == nil {
				a.conns[addr] = c
			}
		}
	}
	a.mu.Unlock()
	if !ok || err != nil {
		return nil, false, nil
	}
	resp, err := pitrpb.NewAgentClient(c).BackupRange(ctx, req)
	if code := status.Code(err); code == codes.Unavailable || code == codes.Unimplemented {
		// Gone, or an older agent: this process scans instead.
		return nil, false, nil
	}
	return resp, true, err
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
