package coordinator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/connector"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

// maxProgressMsg bounds one GetProgress answer: 100k regions of ~100 bytes.
const maxProgressMsg = 256 << 20

// agentPool keeps one gRPC connection per registered agent address.
type agentPool struct {
	tls   connector.TLS // the agents' service is served with the cluster's TLS
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newAgentPool(t connector.TLS) *agentPool {
	return &agentPool{tls: t, conns: map[string]*grpc.ClientConn{}}
}

// keep closes the connections of addresses no longer registered.
func (p *agentPool) keep(agents []*pitrpb.AgentRecord) {
	live := map[string]bool{}
	for _, a := range agents {
		live[a.GetAddr()] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		if !live[addr] {
			_ = c.Close()
			delete(p.conns, addr)
		}
	}
}

func (p *agentPool) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := connector.Dial(addr, p.tls, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxProgressMsg)))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	p.conns[addr] = c
	return c, nil
}

func (p *agentPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}

// poll asks every agent for the task's progress, in parallel, each call
// bounded by timeout. It returns the reports of the agents that answered
// and the state of every agent.
// poll asks every agent for its progress on a task; rescan asks each to
// re-read the task's regions from PD first (there are holes in the cover).
func (p *agentPool) poll(ctx context.Context, agents []*pitrpb.AgentRecord, taskName string, timeout time.Duration, rescan bool) ([]Report, []task.AgentStatus) {
	type answer struct {
		reports []Report
		st      task.AgentStatus
	}
	answers := make([]answer, len(agents))
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := task.AgentStatus{StoreID: a.GetStoreId(), Addr: a.GetAddr()}
			reports, err := p.progress(ctx, a, taskName, timeout, rescan)
			switch code := status.Code(err); {
			case err == nil:
				st.State, st.Regions = task.AgentUp, len(reports)
			case code == codes.NotFound:
				st.State, st.Error = task.AgentNoTask, status.Convert(err).Message()
			default:
				st.State, st.Error = task.AgentDown, err.Error()
			}
			answers[i] = answer{reports, st}
		}()
	}
	wg.Wait()
	var reports []Report
	sts := make([]task.AgentStatus, 0, len(agents))
	for _, a := range answers {
		reports = append(reports, a.reports...)
		sts = append(sts, a.st)
	}
	return reports, sts
}

func (p *agentPool) progress(ctx context.Context, a *pitrpb.AgentRecord, taskName string, timeout time.Duration, rescan bool) ([]Report, error) {
	c, err := p.conn(a.GetAddr())
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := pitrpb.NewAgentClient(c).GetProgress(cctx, &pitrpb.GetProgressRequest{Task: taskName, Rescan: rescan})
	if err != nil {
		return nil, err
	}
	store := resp.GetStoreId()
	if store == 0 {
		store = a.GetStoreId()
	}
	out := make([]Report, 0, len(resp.GetRegions()))
	for _, r := range resp.GetRegions() {
		out = append(out, Report{
			StoreID: store, RegionID: r.GetRegionId(), EpochVersion: r.GetEpochVersion(),
			Start: r.GetStartKey(), End: r.GetEndKey(), Checkpoint: r.GetCheckpoint(),
			OldestPendingStartTS: r.GetOldestPendingStartTs(), Reason: r.GetReason(),
		})
	}
	return out, nil
}

// registeredStatuses lists agents that were not polled.
func registeredStatuses(agents []*pitrpb.AgentRecord) []task.AgentStatus {
	out := make([]task.AgentStatus, 0, len(agents))
	for _, a := range agents {
		out = append(out, task.AgentStatus{StoreID: a.GetStoreId(), Addr: a.GetAddr(), State: task.AgentRegistered})
	}
	return out
}

func unmarshalAgent(b []byte, a *pitrpb.AgentRecord) error { return protobuf.Unmarshal(b, a) }
