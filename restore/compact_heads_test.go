package restore

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// continueFlushes goes on with compactBackup's two stores for windows
// from..to (flush ts 1000+w*100), their flushers continuing their chains,
// and moves the checkpoint to the last flush.
func continueFlushes(b *testBackup, from, to uint64) uint64 {
	rng := rand.New(rand.NewSource(int64(from)))
	for w := from; w <= to; w++ {
		for _, store := range []uint64{1, 2} {
			start, end := map[uint64]string{1: "", 2: "k050"}[store], map[uint64]string{1: "k050", 2: ""}[store]
			var rows []logfile.Row
			for i := 0; i < 20; i++ {
				k := rng.Intn(50) + 50*int(store-1)
				ts := 1000 + (w-1)*100 + 1 + uint64(rng.Intn(99))
				rows = append(rows, logfile.Row{Key: []byte(fmt.Sprintf("k%03d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprintf("w%d", ts))})
			}
			b.flush(store, 1000+w*100, rows, cov(start, end, 1000+(w-1)*100, 1000+w*100))
		}
	}
	b.checkpoint(1000 + to*100)
	return 1000 + to*100
}

// compactTwins is compactBackup twice, with a 13th window flushed: each
// store's newest chain holds one meta, which its agent goes on with.
func compactTwins(t *testing.T) (b, twin *testBackup) {
	b, _ = compactBackup(t)
	twin, _ = compactBackup(t)
	continueFlushes(b, 13, 13)
	continueFlushes(twin, 13, 13)
	return b, twin
}

// compactedMetas lists the compacted metas in storage, superseded or not.
func compactedMetas(t *testing.T, st storage.Storage) []*pitrpb.CompactedMeta {
	t.Helper()
	var out []*pitrpb.CompactedMeta
	require.NoError(t, st.List(context.Background(), logfile.CompactedPrefix, func(oi storage.ObjectInfo) error {
		if !logfile.IsCompactedMetaPath(oi.Key) {
			return nil
		}
		raw, err := st.Get(context.Background(), oi.Key)
		require.NoError(t, err)
		m, err := logfile.DecodeCompactedMeta(raw)
		require.NoError(t, err)
		out = append(out, m)
		return nil
	}))
	return out
}

// requireSameLog: every restore point reads from st what it reads from
// the uncompacted twin, and verify passes with no hole in the log.
func requireSameLog(t *testing.T, st, twin storage.Storage, points []uint64) {
	t.Helper()
	ctx := context.Background()
	for _, T := range points {
		require.Equal(t, stateAt(t, twin, T), stateAt(t, st, T), "a restore to %d reads the same", T)
	}
	_, err := Verify(ctx, st, VerifyOptions{})
	require.NoError(t, err)
	li, err := DescribeLog(ctx, st, 0)
	require.NoError(t, err)
	require.Empty(t, li.Holes)
}

// TestCompactIdleNewestChain: a store's newest chain is compacted once
// idle (SealIdle), and its agent's next meta, which continues the
// superseded meta, still reads as the chain it continues: the compacted
// meta keeps the chain's head. Without the head, Load fails on that meta
// ("continues meta …, which is not in storage"). The small compacted
// metas are then merged again, and the heads no meta can continue any
// more are dropped.
func TestCompactIdleNewestChain(t *testing.T) {
	ctx := context.Background()
	b, twin := compactTwins(t)

	// Both stores' newest chains are idle for as long as asked.
	res, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20, SealIdle: -1})
	require.NoError(t, err)
	require.Equal(t, 5+4, res.Chains, "every chain, the newest too")
	cms := compactedMetas(t, b.st)
	require.Len(t, cms, 1)
	require.Len(t, cms[0].GetHeads(), 2, "the two stores' newest chains")
	require.Equal(t, logfile.CompactedFormatVersion, cms[0].GetFormatVersion())

	// The agents go on with their chains.
	cp := continueFlushes(b, 14, 15)
	continueFlushes(twin, 14, 15)
	points := []uint64{1000, 1500, 2200, 2250, 2300, 2333, 2400, 2450, cp}
	requireSameLog(t, b.st, twin.st, points)

	// After the grace period the superseded metas go; the continuing metas
	// still read from the heads.
	later := func() time.Time { return time.Now().Add(2 * DefaultCompactGrace) }
	gc, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20, now: later})
	require.NoError(t, err)
	require.Equal(t, res.Metas, gc.RemovedMetas)
	require.Zero(t, gc.Chains, "the newest chains are not idle for the default")
	requireSameLog(t, b.st, twin.st, points)

	// The continuations are compacted with the first compacted meta, which
	// is small and none of whose inputs is left.
	again, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20, SealIdle: -1, now: later})
	require.NoError(t, err)
	require.Equal(t, 1, again.Recompacted)
	require.Equal(t, 2, again.Chains)
	requireSameLog(t, b.st, twin.st, points)
	bk := mustLoad(t, b.st)
	require.Len(t, bk.Superseded, 1, "the first compacted meta, hidden until the grace period ends")

	// Its clean-up removes the first compacted meta and its files: one
	// compacted meta is left, holding the heads of the continuations only
	// (the first heads' chains were continued, and are compacted).
	gc2, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20, now: func() time.Time { return time.Now().Add(4 * DefaultCompactGrace) }})
	require.NoError(t, err)
	require.Equal(t, again.Metas+again.Recompacted, gc2.RemovedMetas)
	cms = compactedMetas(t, b.st)
	require.Len(t, cms, 1)
	var heads []string
	for _, h := range cms[0].GetHeads() {
		heads = append(heads, h.GetMetaPath())
	}
	require.Len(t, heads, 2)
	for _, h := range heads {
		ts, _, err := logfile.ParseMetaPath(h)
		require.NoError(t, err)
		require.Equal(t, uint64(2500), ts, "a head of a continuation's last meta")
	}
	referenced := map[string]bool{}
	for _, f := range cms[0].GetFiles() {
		referenced[f.GetPath()] = true
	}
	require.NoError(t, b.st.List(ctx, logfile.CompactedPrefix+"data/", func(oi storage.ObjectInfo) error {
		require.True(t, referenced[oi.Key], "%s is left behind", oi.Key)
		return nil
	}))
	var raw int
	require.NoError(t, b.st.List(ctx, logfile.MetaPrefix, func(storage.ObjectInfo) error { raw++; return nil }))
	require.Zero(t, raw, "every meta is compacted and deleted")

	// And the agents can still continue.
	cp = continueFlushes(b, 16, 16)
	continueFlushes(twin, 16, 16)
	requireSameLog(t, b.st, twin.st, append(points, cp))
}

// TestTruncateKeepsHeads: a truncate that removes a compacted meta whose
// chain heads a store's agent may still continue keeps those heads (a
// compacted meta of heads alone), so the agent's next meta reads.
func TestTruncateKeepsHeads(t *testing.T) {
	ctx := context.Background()
	b, twin := compactTwins(t)
	_, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20, SealIdle: -1})
	require.NoError(t, err)
	later := func() time.Time { return time.Now().Add(2 * DefaultCompactGrace) }
	_, err = Compact(ctx, b.st, CompactOptions{now: later})
	require.NoError(t, err)

	testSnapshot{BackupTS: 2300, Task: "cmp"}.write(t, b.st, snapshot.TaskRoot(2300), stateAt(t, twin.st, 2300))
	tr, err := Truncate(ctx, b.st, 2300, TruncateOptions{})
	require.NoError(t, err)
	require.Equal(t, uint64(2300), tr.UntilTS)
	require.Equal(t, 1, tr.Metas, "the compacted meta")
	cms := compactedMetas(t, b.st)
	require.Len(t, cms, 1)
	require.Empty(t, cms[0].GetFiles())
	require.Len(t, cms[0].GetHeads(), 2)

	cp := continueFlushes(b, 14, 15)
	continueFlushes(twin, 14, 15)
	for _, T := range []uint64{2300, 2350, 2400, cp} {
		require.Equal(t, stateAt(t, twin.st, T), stateAt(t, b.st, T), "a restore to %d reads the same", T)
	}
	_, err = Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)

	// A second truncate keeps them once, not twice.
	_, err = Truncate(ctx, b.st, 2300, TruncateOptions{})
	require.NoError(t, err)
	require.Len(t, compactedMetas(t, b.st), 1)
	_, err = Load(ctx, b.st)
	require.NoError(t, err)
}

// TestCompactedMetaVersion: a compacted meta with heads or superseding
// compacted metas is version 3, which a build reading only version 2
// refuses as too new instead of reading it wrong; one with neither stays
// version 2.
func TestCompactedMetaVersion(t *testing.T) {
	for _, c := range []struct {
		m    *pitrpb.CompactedMeta
		want uint32
	}{
		{&pitrpb.CompactedMeta{Task: "t", Supersedes: []string{"meta/00000000000003e8-0000000000000001.meta"}}, logfile.FormatVersion},
		{&pitrpb.CompactedMeta{Task: "t", Supersedes: []string{logfile.CompactedMetaPath(1000, "ab")}}, logfile.CompactedFormatVersion},
		{&pitrpb.CompactedMeta{Task: "t", Heads: []*pitrpb.ChainHead{{MetaPath: "meta/00000000000003e8-0000000000000001.meta", StoreId: 1}}}, logfile.CompactedFormatVersion},
	} {
		raw, err := logfile.EncodeCompactedMeta(c.m)
		require.NoError(t, err)
		m, err := logfile.DecodeCompactedMeta(raw)
		require.NoError(t, err)
		require.Equal(t, c.want, m.GetFormatVersion(), strings.Join(c.m.GetSupersedes(), ","))
	}
}
