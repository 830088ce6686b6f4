package restore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit/metasim"
)

// TestDayOfMetas (issue 12's acceptance): a day of 5 s flushes of 3 stores
// at 10k regions (testkit/metasim: the metas agents write), planned and
// verified under 512 MiB of heap, with the in-memory storage that holds
// the metas counted in.
func TestDayOfMetas(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("writes 50k metas")
	}
	ctx := context.Background()
	// In memory: a file:// store syncs every object, which would make this
	// test take minutes.
	st, err := storage.Open(ctx, "mem://day")
	require.NoError(t, err)
	defer st.Close()
	began := time.Now()
	sim, err := metasim.Write(ctx, st, metasim.Options{Task: "day", Regions: 10000, Flushes: 17280})
	require.NoError(t, err)
	t.Logf("wrote %d metas (%s; the full lists would be about %s) in %s", sim.Metas, storage.FormatBytes(sim.MetaBytes),
		storage.FormatBytes(sim.FullBytes), time.Since(began).Round(time.Millisecond))

	var plan *Plan
	began = time.Now()
	planHeap, held := metasim.PeakHeap(func() {
		bk, err := Load(ctx, st)
		require.NoError(t, err)
		plan, err = NewPlan(PlanInput{Task: bk.Task, Checkpoint: bk.Checkpoint, Metas: bk.Metas, Coverage: bk.Coverage, RestoreTS: bk.Checkpoint})
		require.NoError(t, err)
		t.Logf("coverage: %d rectangles from %d metas", len(bk.Coverage), len(bk.Metas))
	})
	planTook := time.Since(began)
	began = time.Now()
	var vr *VerifyResult
	verifyHeap, _ := metasim.PeakHeap(func() {
		vr, err = Verify(ctx, st, VerifyOptions{})
		require.NoError(t, err)
	})
	t.Logf("restore planning: peak heap %s in %s (%d units); verify: peak heap %s in %s (%d metas); "+
		"%s of it before either (the in-memory storage holding the metas)",
		storage.FormatBytes(int64(planHeap)), planTook.Round(time.Millisecond), len(plan.Units),
		storage.FormatBytes(int64(verifyHeap)), time.Since(began).Round(time.Millisecond), vr.Metas,
		storage.FormatBytes(int64(held)))
	require.Less(t, planHeap, uint64(512<<20))
	require.Less(t, verifyHeap, uint64(512<<20))
	require.Less(t, sim.MetaBytes*20, sim.FullBytes, "chains store at least 20× less than full lists")
}
