package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
)

// registers sums the EventFeed Registers every running store received.
func (e *env) registers() uint64 {
	var n uint64
	for _, id := range e.p.StoreIDs() {
		n += e.p.CDCRegisters(id)
	}
	return n
}

// waitScans waits until PD answered n more region scans than base.
func (e *env) waitScans(base, n uint64, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for e.p.PD.RegionScans() < base+n {
		require.True(e.t, time.Now().Before(deadline), "agents did not scan PD %d times within %s", n, within)
		time.Sleep(20 * time.Millisecond) // polling a counter
	}
}

// TestPeerMoveKeepsSubscriptions: a peer move changes only conf_ver, which
// TiKV CDC ignores, so the agents must not subscribe again (on TiKV < 7.3 a
// Deregister would be a Register, answered DuplicateRequest forever).
func TestPeerMoveKeepsSubscriptions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	for _, version := range []string{"8.5.0", "7.1.0"} {
		t.Run(version, func(t *testing.T) {
			ctx := context.Background()
			e := newEnvWith(t, playground.Config{Stores: 4, Replicas: 3, TiKVVersion: version}, nil, 300*time.Millisecond)
			for _, id := range e.p.StoreIDs() {
				e.startAgent(id)
			}
			ts0, err := e.p.TS(ctx)
			require.NoError(t, err)
			e.waitCheckpoint(nil, nil, ts0, 30*time.Second)

			before := e.registers()
			r := e.p.Cluster.Regions()[0]
			var follower uint64
			for _, p := range r.Peers {
				if p.StoreId != r.Leader {
					follower = p.StoreId
				}
			}
			scans := e.p.PD.RegionScans()
			require.NoError(t, e.p.Cluster.MovePeer(r.ID, follower, 4))
			// Every agent sees the new conf_ver in PD at least three times
			// (the old agent deregistered after two).
			e.waitScans(scans, 3*4, 30*time.Second)
			ts1, err := e.p.TS(ctx)
			require.NoError(t, err)
			e.waitCheckpoint(nil, nil, ts1, 20*time.Second)
			require.Equal(t, before, e.registers(), "Registers sent because of a peer move")
		})
	}
}

// TestPDRestartKeepsSubscriptions: after a PD restart PD knows no leader
// until heartbeats arrive; that is "unknown", not "elsewhere", so no
// subscription ends and the checkpoint keeps advancing.
func TestPDRestartKeepsSubscriptions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ctx := context.Background()
	const leadersBack = 40 * time.Second
	e := newEnvWith(t, playground.Config{Stores: 3, PDLeaderDelay: leadersBack}, nil, 300*time.Millisecond)
	for _, k := range []string{"b", "m", "t"} {
		_, err := e.p.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	for i, r := range e.p.Cluster.Regions() {
		require.NoError(t, e.p.Cluster.TransferLeader(r.ID, e.p.StoreIDs()[i%3]))
	}
	for _, id := range e.p.StoreIDs() {
		e.startAgent(id)
	}
	ts0, err := e.p.TS(ctx)
	require.NoError(t, err)
	e.waitCheckpoint(nil, nil, ts0, 30*time.Second)

	before := e.registers()
	restarted := time.Now()
	require.NoError(t, e.p.RestartPD(ctx))
	// Every agent scans the leaderless regions three times.
	e.waitScans(0, 3*3, 20*time.Second)
	ts1, err := e.p.TS(ctx)
	require.NoError(t, err)
	e.waitCheckpoint(nil, nil, ts1, 15*time.Second)
	require.Equal(t, before, e.registers(), "Registers sent because PD lost the leaders")
	require.Less(t, time.Since(restarted), leadersBack, "PD learnt the leaders again before the test ended: it proves nothing")
}

// TestRegionScanRate: at the default region interval an agent scans PD
// every 10s in steady state, and at once on a change signal (a split's
// EpochNotMatch), not every second.
func TestRegionScanRate(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ctx := context.Background()
	e := newEnv(t, nil, 300*time.Millisecond)
	e.cfg.RegionInterval = 0 // the default
	for _, id := range e.p.StoreIDs() {
		e.startAgent(id)
	}
	ts0, err := e.p.TS(ctx)
	require.NoError(t, err)
	e.waitCheckpoint(nil, nil, ts0, 30*time.Second)

	n0 := e.p.PD.RegionScans()
	time.Sleep(5 * time.Second) // measuring a rate over a window, not synchronising
	n := e.p.PD.RegionScans() - n0
	require.LessOrEqual(t, n, uint64(3), "%d region scans by 3 agents in 5s", n)

	// A split is a change signal: the new regions are captured long
	// before the next periodic scan.
	for i := 0; i < 3; i++ {
		_, err := e.p.Cluster.Split([]byte(fmt.Sprintf("k%d", i)))
		require.NoError(t, err)
	}
	split := time.Now()
	ts1, err := e.p.TS(ctx)
	require.NoError(t, err)
	e.waitCheckpoint(nil, nil, ts1, 20*time.Second)
	require.Less(t, time.Since(split), 8*time.Second, "split regions waited for the periodic scan")
}
