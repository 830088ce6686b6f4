package restore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
)

// TestDescribeLog: the restorable range starts at the task's start when it
// started empty, at its oldest usable snapshot otherwise; every hole is
// listed (not only the first), and unfinished snapshots are not usable.
func TestDescribeLog(t *testing.T) {
	ctx := context.Background()
	b, cuts := smallBackup(t)
	li, err := DescribeLog(ctx, b.st, 0)
	require.NoError(t, err)
	require.Equal(t, cuts[0], li.Restorable)
	require.Equal(t, 6, li.Metas)
	require.Equal(t, 2, li.Keyframes)
	require.Equal(t, 4, li.Deltas)
	require.Empty(t, li.Holes)

	dir, st := b.copyTo(t)
	// Store 1's last meta and store 2's: two holes, one per store's keys.
	for _, s := range []uint64{1, 2} {
		require.NoError(t, os.Remove(filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[3], s)))))
	}
	li, err = DescribeLog(ctx, st, 0)
	require.NoError(t, err)
	require.Len(t, li.Holes, 1, "adjacent keys over one interval are one hole")
	require.Equal(t, cuts[2], li.Holes[0].From)
	require.Equal(t, cuts[3], li.Holes[0].To)
	var sb strings.Builder
	require.NoError(t, li.Print(&sb))
	require.Contains(t, sb.String(), "Holes:       1 (below)")
	require.Contains(t, sb.String(), "keys [-inf, +inf) have no log for commit_ts")

	sb2, _ := snapshotBackup(t)
	li, err = DescribeLog(ctx, sb2.st, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(150), li.Restorable)
	require.Len(t, li.Snapshots, 3)
	require.True(t, li.Snapshots[0].Usable)
	require.True(t, li.Snapshots[1].Usable)
	require.False(t, li.Snapshots[2].Finished)
	require.False(t, li.Snapshots[2].Usable)
}
