package restore

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/importer"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// writeBackup is a small backup: keys w000..w199 written by two stores in
// three flushes, some values longer than TiKV's 255-byte short values,
// some deletes. It returns the backup, its history and its checkpoint.
func writeBackup(t *testing.T) (*testBackup, history, uint64) {
	t.Helper()
	start := keyspace.Compose(1000, 0)
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "write", StartTs: start, StartedEmpty: true})
	rng := rand.New(rand.NewSource(11))
	cuts := []uint64{start, start + 100, start + 200, start + 300}
	var hist history
	seen := map[string]bool{}
	for w := 1; w < len(cuts); w++ {
		var r1, r2 []logfile.Row
		for i := 0; i < 300; i++ {
			k := rng.Intn(200)
			ts := cuts[w-1] + 1 + uint64(rng.Intn(int(cuts[w]-cuts[w-1])))
			id := fmt.Sprintf("%d@%d", k, ts)
			if seen[id] {
				continue
			}
			seen[id] = true
			r := logfile.Row{Key: []byte(fmt.Sprintf("w%03d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut,
				Value: []byte(strings.Repeat(string(rune('a'+rng.Intn(26))), 1+rng.Intn(400)))}
			if rng.Intn(5) == 0 {
				r.Op, r.Value = logfile.OpDelete, nil
			}
			if k < 100 {
				r1 = append(r1, r)
			} else {
				r2 = append(r2, r)
			}
			hist = append(hist, r)
		}
		b.flush(1, cuts[w], r1, cov("", "w100", cuts[w-1], cuts[w]))
		b.flush(2, cuts[w], r2, cov("w100", "", cuts[w-1], cuts[w]))
	}
	b.checkpoint(cuts[3])
	sort.Slice(hist, func(i, j int) bool {
		if c := strings.Compare(string(hist[i].Key), string(hist[j].Key)); c != 0 {
			return c < 0
		}
		return hist[i].CommitTS > hist[j].CommitTS
	})
	return b, hist, cuts[3]
}

func startImportTarget(t *testing.T, ctx context.Context, lim importer.Limits, splits ...string) *playground.Playground {
	t.Helper()
	p, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1, Import: lim})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	for i, k := range splits {
		rs, err := p.Cluster.Split([]byte(k))
		require.NoError(t, err)
		require.NoError(t, p.Cluster.TransferLeader(rs[1].ID, uint64(1+i%3)))
	}
	return p
}

// TestRestoreIntoRegions restores into a target of several regions (R1: an
// SST must carry its encoded key range, or every region that does not
// start at "" answers KeyNotInRegion).
func TestRestoreIntoRegions(t *testing.T) {
	ctx := context.Background()
	b, hist, cp := writeBackup(t)
	for _, T := range []uint64{cp - 150, cp} {
		tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: -1}, "w050", "w100", "w150")
		cli := newTargetClient(t, tgt.PDAddr())
		res, err := Run(ctx, Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: T, ChunkBytes: 4 << 10,
			MaxAttempts: 3, ProgressFile: filepath.Join(t.TempDir(), "progress.json")})
		require.NoError(t, err)
		require.GreaterOrEqual(t, res.Regions, 4)
		requireSame(t, hist.at(T), scanAt(t, cli, T), fmt.Sprintf("restored at %d", T))
		require.Zero(t, tgt.PendingSSTs(), "every SST written was ingested")
	}
}

// newTargetClient is newTxnClient, retrying the client's creation: the PD
// client may fail its first calls right after a playground started.
func newTargetClient(t *testing.T, pdAddr string) *txnkv.Client {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		cli, err := txnkv.NewClient([]string{pdAddr})
		if err == nil {
			if _, err = cli.CurrentTimestamp("global"); err == nil {
				t.Cleanup(func() { _ = cli.Close() })
				return cli
			}
			_ = cli.Close()
		}
		require.True(t, time.Now().Before(deadline), "connect to the target: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWriteChunkRegionChanged: a split between the write and the ingest
// makes the ingest fail (EpochNotMatch: the SSTs carry the old epoch), so
// the rows are routed again and written again to every peer of the new
// regions; a leader move makes it fail with NotLeader, and the same.
func TestWriteChunkRegionChanged(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		change func(p *playground.Playground, reg *region) error
		writes int64 // Write streams in all
	}{
		{name: "split", writes: 3 + 3*2, change: func(p *playground.Playground, _ *region) error {
			_, err := p.Cluster.Split([]byte("c/05"))
			return err
		}},
		{name: "leader moved", writes: 3 + 3, change: func(p *playground.Playground, reg *region) error {
			return p.Cluster.TransferLeader(reg.id, reg.leader.GetStoreId()%3+1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: -1})
			cli := newTargetClient(t, tgt.PDAddr())
			target, err := dialTarget(ctx, []string{tgt.PDAddr()}, connector.TLS{}, hclog.NewNullLogger())
			require.NoError(t, err)
			defer target.Close()
			var once sync.Once
			target.beforeIngest = func(reg *region) {
				once.Do(func() { require.NoError(t, tc.change(tgt, reg)) })
			}
			now, err := cli.CurrentTimestamp("global")
			require.NoError(t, err)
			c := &chunk{}
			want := map[string]string{}
			for j := 0; j < 10; j++ {
				k := fmt.Sprintf("c/%02d", j)
				r := logfile.Row{Key: []byte(k), CommitTS: now - 10, Op: logfile.OpPut, Value: []byte(k)}
				c.add(&r)
				want[k] = k
			}
			require.NoError(t, target.writeChunk(ctx, c, nil))
			st := tgt.ImportStats()
			require.Equal(t, tc.writes, st.Writes)
			ts, err := cli.CurrentTimestamp("global")
			require.NoError(t, err)
			requireSame(t, want, scanAt(t, cli, ts), "written")
		})
	}
}
