package coordinator

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/pitr-io/pitr/task"
)

// elect campaigns on a fresh session and returns the session and a term
// object of the coordinator co. The term is not run: nothing halts it when
// its session ends, so its writes reach etcd, which must refuse them.
func elect(t *testing.T, ctx context.Context, co *Coordinator, cli *clientv3.Client, id string) (*concurrency.Session, *term) {
	t.Helper()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(1))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sess.Close() })
	el := concurrency.NewElection(sess, task.ElectionPrefix)
	require.NoError(t, el.Campaign(ctx, id))
	return sess, newTerm(co, el.Key(), el.Rev(), sess.Done())
}

// TestFencing: a deposed term's checkpoint write is refused with
// ErrNotLeader, whether its lease was revoked or its session stopped
// keeping it alive; the checkpoint is never lowered.
func TestFencing(t *testing.T) {
	c := startCluster(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cliA, cliB := c.etcd(t), c.etcd(t)
	rec := startTask(t, c, cliA, "fence", nil)
	start := rec.GetInfo().GetStartTs()
	co, err := New(Config{Etcd: cliA, PD: c.pd, HTTPAddr: "-"})
	require.NoError(t, err)
	_, taskRev, err := task.Get(ctx, cliA, "fence")
	require.NoError(t, err)

	// A leads and writes.
	sessA, termA := elect(t, ctx, co, cliA, "A")
	require.NoError(t, termA.putCheckpoint(ctx, "fence", taskRev, start, true, start+10))
	require.Equal(t, start+10, checkpoint(t, cliA, "fence"))
	// Never lower, never over a value it did not read.
	require.Error(t, termA.putCheckpoint(ctx, "fence", taskRev, start+10, true, start+5))
	require.ErrorIs(t, termA.putCheckpoint(ctx, "fence", taskRev, start, true, start+20), errChanged)
	require.Equal(t, start+10, checkpoint(t, cliA, "fence"))

	// A's lease is revoked (as if it expired); B is elected.
	_, err = cliA.Revoke(ctx, sessA.Lease())
	require.NoError(t, err)
	_, termB := elect(t, ctx, co, cliB, "B")
	require.Greater(t, termB.rev, termA.rev)
	// A's term object still exists and has not noticed (a stalled
	// process: nothing runs it here): etcd refuses its write.
	err = termA.putCheckpoint(ctx, "fence", taskRev, start+10, true, start+30)
	require.ErrorIs(t, err, ErrNotLeader)
	require.Equal(t, start+10, checkpoint(t, cliA, "fence"))
	require.NoError(t, termB.putCheckpoint(ctx, "fence", taskRev, start+10, true, start+40))

	// Every fenced write of the old term fails, not only checkpoints.
	require.ErrorIs(t, termA.fenced(ctx, nil, clientv3.OpPut(task.StatusKey("fence"), "x")), ErrNotLeader)
	require.Equal(t, start+40, checkpoint(t, cliA, "fence"))
}

// TestSessionPauseDeposes: a leader whose session stops refreshing its
// lease (a process paused longer than the TTL) loses the election key; the
// standby takes over and the old term's writes fail.
func TestSessionPauseDeposes(t *testing.T) {
	c := startCluster(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cliA, cliB := c.etcd(t), c.etcd(t)
	rec := startTask(t, c, cliA, "pause", nil)
	start := rec.GetInfo().GetStartTs()
	_, taskRev, err := task.Get(ctx, cliA, "pause")
	require.NoError(t, err)
	co, err := New(Config{Etcd: cliA, PD: c.pd, HTTPAddr: "-"})
	require.NoError(t, err)

	sessA, termA := elect(t, ctx, co, cliA, "A")
	sessA.Orphan() // keep-alives stop; the lease (TTL 1 s) runs out
	began := time.Now()
	_, termB := elect(t, ctx, co, cliB, "B") // blocks until A's key is gone
	t.Logf("standby elected %s after the leader stopped refreshing", time.Since(began).Round(time.Millisecond))
	require.ErrorIs(t, termA.putCheckpoint(ctx, "pause", taskRev, start, true, start+1), ErrNotLeader)
	require.NoError(t, termB.putCheckpoint(ctx, "pause", taskRev, start, true, start+2))
}

// TestFailover: two coordinators, fake agents whose checkpoints follow the
// clock; the leader is killed (its etcd client closed, no resignation) and
// the other takes over: the checkpoint moves again within 15 s.
func TestFailover(t *testing.T) {
	c := startCluster(t, 0)
	cli := c.etcd(t)
	a1 := startFakeAgent(t, cli, 1, region(1, 3, "", "m"))
	a2 := startFakeAgent(t, cli, 2, region(2, 3, "m", ""))
	a1.serve("fo")
	a2.serve("fo")
	startTask(t, c, cli, "fo", nil)
	coA := c.startCoordinator(t, "A", nil)
	coB := c.startCoordinator(t, "B", nil)

	var leader, standby *coord
	require.Eventually(t, func() bool {
		switch {
		case coA.IsLeader():
			leader, standby = coA, coB
		case coB.IsLeader():
			leader, standby = coB, coA
		}
		return leader != nil
	}, 10*time.Second, 20*time.Millisecond)
	first := checkpoint(t, cli, "fo")
	require.Eventually(t, func() bool { return checkpoint(t, cli, "fo") > first }, 10*time.Second, 50*time.Millisecond,
		"the leader advances the checkpoint")
	require.False(t, standby.IsLeader())

	// /metrics and /healthz of the leader.
	body := httpGet(t, "http://"+leader.HTTPAddr()+"/metrics")
	require.Contains(t, body, "pitr_coordinator_is_leader 1")
	require.Contains(t, body, `pitr_coordinator_checkpoint_lag_seconds{task="fo"}`)
	require.Contains(t, body, `pitr_coordinator_uncovered_ranges{task="fo"} 0`)
	require.Contains(t, body, "pitr_coordinator_agents_up 2")
	require.Contains(t, body, "pitr_coordinator_tick_duration_seconds_bucket")
	require.Contains(t, httpGet(t, "http://"+leader.HTTPAddr()+"/healthz"), "ok leader")
	require.Contains(t, httpGet(t, "http://"+standby.HTTPAddr()+"/healthz"), "ok standby")
	require.Contains(t, httpGet(t, "http://"+standby.HTTPAddr()+"/metrics"), "pitr_coordinator_is_leader 0")

	// Kill the leader: its etcd client goes away without resigning.
	killed := time.Now()
	require.NoError(t, leader.etcd.Close())
	atKill := checkpoint(t, cli, "fo")
	require.Eventually(t, standby.IsLeader, 15*time.Second, 20*time.Millisecond, "the standby is elected")
	elected := time.Since(killed)
	require.Eventually(t, func() bool { return checkpoint(t, cli, "fo") > atKill }, 15*time.Second-elected, 50*time.Millisecond,
		"the checkpoint moves again within 15 s of the kill")
	t.Logf("failover: elected after %s, checkpoint moving after %s", elected.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	// The storage checkpoint follows (never lower than etcd's last value
	// before the kill).
	var v task.TaskView
	require.Eventually(t, func() bool {
		views, err := task.ReadViews(context.Background(), cli, "fo", time.Now())
		require.NoError(t, err)
		require.Len(t, views, 1)
		v = views[0]
		return v.Status != nil && v.Status.Leader == standby.ID()
	}, 5*time.Second, 50*time.Millisecond, "the new leader publishes the status")
	require.Len(t, v.Status.Agents, 2)
	require.Equal(t, task.AgentUp, v.Status.Agents[0].State)
	require.True(t, v.Status.Covered)
	require.Less(t, v.LagSeconds, 10.0)
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// TestGracefulHandover: a leader stopped gracefully resigns, so the standby
// is elected well before the leader's 10 s lease could have expired.
func TestGracefulHandover(t *testing.T) {
	c := startCluster(t, 0)
	long := func(cfg *Config) { cfg.SessionTTL = 10 * time.Second }
	coA := c.startCoordinator(t, "A", long)
	require.Eventually(t, coA.IsLeader, 10*time.Second, 20*time.Millisecond)
	coB := c.startCoordinator(t, "B", long)
	time.Sleep(200 * time.Millisecond)
	require.False(t, coB.IsLeader())
	began := time.Now()
	coA.stop(t)
	require.False(t, coA.IsLeader())
	require.Eventually(t, coB.IsLeader, 5*time.Second, 20*time.Millisecond)
	t.Logf("standby elected %s after a graceful stop", time.Since(began).Round(time.Millisecond))
}
