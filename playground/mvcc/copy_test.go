package mvcc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// linkCopy copies dir the way the local volume provider snapshots a live
// directory: list it, hard-link every listed file in the given order
// (skipping one that vanished since the listing) and record its size; then
// materialise the copy, each file cut at its recorded size, in out.
func linkCopy(t *testing.T, dir, out string, reverse bool) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if reverse {
		sort.Sort(sort.Reverse(sort.StringSlice(names)))
	}
	links := t.TempDir()
	sizes := map[string]int64{}
	for _, n := range names {
		if err := os.Link(filepath.Join(dir, n), filepath.Join(links, n)); errors.Is(err, os.ErrNotExist) {
			continue
		} else {
			require.NoError(t, err)
		}
		fi, err := os.Stat(filepath.Join(links, n))
		require.NoError(t, err)
		sizes[n] = fi.Size()
	}
	require.NoError(t, os.MkdirAll(out, 0o755))
	for n, size := range sizes {
		src, err := os.Open(filepath.Join(links, n))
		require.NoError(t, err)
		dst, err := os.Create(filepath.Join(out, n))
		require.NoError(t, err)
		_, err = io.CopyN(dst, src, size)
		require.NoError(t, err)
		require.NoError(t, src.Close())
		require.NoError(t, dst.Close())
	}
}

// TestLiveCopyIsACrashState copies the engine's directory by hard links
// while batches and checkpoints run: with the checkpoint linked after the
// log segments (reverse name order), the copy opens as a crash state
// holding a prefix of the batches, and its AppliedIndex says how many.
// Linked in name order (checkpoint first), a copy may miss a segment a
// later checkpoint deleted: it then fails to open with errWALGap, and
// never opens with a batch missing.
func TestLiveCopyIsACrashState(t *testing.T) {
	for _, reverse := range []bool{true, false} {
		t.Run(fmt.Sprintf("reverse=%v", reverse), func(t *testing.T) {
			dir := t.TempDir()
			e, err := Open(dir, nil)
			require.NoError(t, err)
			var committed atomic.Uint64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				for i := uint64(1); i <= 20000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := []byte(fmt.Sprintf("k%08d", i))
					if err := e.Ingest([]IngestEntry{{Key: k, StartTS: i, CommitTS: i, Value: k}}); err != nil {
						t.Error(err)
						return
					}
					committed.Store(i)
				}
			}()
			go func() {
				defer wg.Done()
				tick := time.NewTicker(2 * time.Millisecond) // pacing, not synchronisation
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if err := e.Checkpoint(); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			gaps := 0
			for c := 0; c < 8; c++ {
				before := committed.Load()
				out := filepath.Join(t.TempDir(), "copy")
				linkCopy(t, dir, out, reverse)
				cp, err := Open(out, nil)
				if errors.Is(err, errWALGap) && !reverse {
					gaps++
					continue
				}
				require.NoError(t, err)
				n := cp.AppliedIndex()
				require.GreaterOrEqual(t, n, before, "the copy holds every batch applied before it started")
				st := cp.Stats()
				require.Equal(t, int(n), st.Writes, "a prefix: exactly the first AppliedIndex batches")
				for _, i := range []uint64{1, n} { // the first and the last batch
					if n == 0 {
						continue
					}
					k := []byte(fmt.Sprintf("k%08d", i))
					v, ok, err := cp.Get(k, ^uint64(0)-1, ReadOptions{})
					require.NoError(t, err)
					require.True(t, ok, "batch %d of %d", i, n)
					require.Equal(t, k, v)
				}
				require.NoError(t, cp.Close())
			}
			close(stop)
			wg.Wait()
			require.NoError(t, e.Close())
			t.Logf("copies that hit a gap: %d of 8", gaps)
		})
	}
}

func TestAppliedIndexPersists(t *testing.T) {
	dir := t.TempDir()
	e, err := Open(dir, nil)
	require.NoError(t, err)
	writeTxn(t, e, 10, 20, put("a", "1")) // prewrite + commit: 2 batches
	require.EqualValues(t, 2, e.AppliedIndex())
	require.NoError(t, e.Checkpoint())
	writeTxn(t, e, 30, 40, put("b", "2"))
	crash(e)
	e, err = Open(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, 4, e.AppliedIndex(), "checkpoint plus replay")
	require.NoError(t, e.Close())
	e, err = Open(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, 4, e.AppliedIndex(), "after a clean close")
	require.NoError(t, e.Close())
}

func TestResolveRangeAndLoad(t *testing.T) {
	src := newMem(t)
	writeTxn(t, src, 10, 20, put("a", "1"))
	writeTxn(t, src, 30, 40, put("a", string(make([]byte, 300))))
	writeTxn(t, src, 11, 21, put("b", "1"))
	require.NoError(t, src.BatchRollback(bkeys("b"), 50))
	mustPrewrite(t, src, 35, "c", put("c", "x"))
	mods, err := src.RangeRecords([]byte("a"), []byte("c"))
	require.NoError(t, err)
	dst := newMem(t)
	require.NoError(t, dst.Load(mods))
	require.Equal(t, Stats{Locks: 0, Writes: 4, Values: 1}, dst.Stats(), "c is outside the range")
	all, err := src.RangeRecords(nil, nil)
	require.NoError(t, err)
	require.NoError(t, dst.Load(all))
	st, err := dst.ResolveRange(nil, nil, 30)
	require.NoError(t, err)
	require.Equal(t, ResolveStats{Writes: 2, Locks: 1, MaxCommitTS: 50}, st)
	require.Equal(t, Stats{Locks: 0, Writes: 2, Values: 0}, dst.Stats())
	v, ok := mustGet(t, dst, "a", 100)
	require.True(t, ok)
	require.Equal(t, "1", v)
	st, err = dst.ResolveRange(nil, nil, 30)
	require.NoError(t, err)
	require.Equal(t, ResolveStats{}, st, "idempotent")
}
