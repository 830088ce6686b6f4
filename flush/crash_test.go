package flush

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

var errInjected = errors.New("injected fault")

// Fault kinds at one upload step.
const (
	faultFail  = "fail"  // the upload fails midway; nothing is stored
	faultLost  = "lost"  // the upload is stored, the response is lost
	faultCrash = "crash" // the process dies: this and every later upload fail, the Flusher is abandoned
)

// faultUploader fails the failAt-th PutReader call (1-based) as kind says,
// and fails the test if a key is ever stored twice (immutability).
type faultUploader struct {
	st     storage.Storage
	t      *testing.T
	failAt int
	kind   string

	mu      sync.Mutex
	calls   int
	crashed bool
	stored  map[string]bool
	keys    []string // every key PutReader was called with, in call order
}

func (u *faultUploader) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	u.mu.Lock()
	u.calls++
	n, dead := u.calls, u.crashed
	u.keys = append(u.keys, key)
	if n == u.failAt && u.kind == faultCrash {
		u.crashed = true
	}
	u.mu.Unlock()
	if dead {
		return fmt.Errorf("process is gone: %w", errInjected)
	}
	if n == u.failAt && u.kind != faultLost {
		_, _ = io.CopyN(io.Discard, r, 1000) // die mid-stream
		return errInjected
	}
	if err := u.st.PutReader(ctx, key, r, size); err != nil {
		return err
	}
	u.mu.Lock()
	if u.stored[key] {
		u.t.Errorf("%s stored twice", key)
	}
	u.stored[key] = true
	u.mu.Unlock()
	if n == u.failAt {
		return errInjected
	}
	return nil
}

// TestCrashAtEachStep fails or crashes the uploads of one flush at every
// step (each data file, the meta) and, separately, crashes after the meta.
// After each fault: storage never has a meta referencing a missing or
// different file, and retrying (the same Flusher, or a new one after a
// crash with the rows captured again) stores every row.
func TestCrashAtEachStep(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	rows := genRows(rng, 3000, 1<<30, 300) // ~1 MiB: 4 files of 256 KiB
	all := want(rows)

	cfg := Config{Settings: Settings{MemoryBudget: 256 << 10, FileTarget: 256 << 10, UploadConcurrency: 1}}
	// Count the steps of a clean flush.
	probe := &faultUploader{st: memStorage(t), t: t, stored: map[string]bool{}}
	pcfg := cfg
	pcfg.Storage = probe
	pf := newFlusher(t, pcfg)
	addAll(t, pf, clones(rows), 100)
	m, err := pf.Flush(context.Background(), keyspace.Compose(1, 0), nil)
	require.NoError(t, err)
	steps := probe.calls
	require.Equal(t, len(m.Files)+1, steps)
	require.GreaterOrEqual(t, len(m.Files), 3)

	for step := 1; step <= steps+1; step++ { // steps+1: after the meta
		for _, kind := range []string{faultFail, faultLost, faultCrash} {
			if step > steps && kind != faultCrash {
				continue
			}
			name := fmt.Sprintf("%s at upload %d of %d", kind, step, steps)
			if step > steps {
				name = "crash after the meta"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				st := memStorage(t)
				up := &faultUploader{st: st, t: t, failAt: step, kind: kind, stored: map[string]bool{}}
				c := cfg
				c.Storage = up
				c.Dir = t.TempDir()
				f, err := New(withDefaults(c))
				require.NoError(t, err)
				addAll(t, f, clones(rows), 100)
				require.NotEmpty(t, runFiles(t, c.Dir), "the flush reads spill runs too")

				_, err = f.Flush(ctx, keyspace.Compose(10, 0), regions(keyspace.Compose(10, 0)))
				if step <= steps {
					require.ErrorIs(t, err, errInjected)
				} else {
					require.NoError(t, err)
				}
				checkStorage(t, st) // I5: every meta's files are complete

				if kind == faultCrash {
					// The process is gone; a new one starts on the same dir and
					// the agent captures the unflushed rows again.
					up.mu.Lock()
					up.crashed, up.failAt = false, 0
					up.mu.Unlock()
					f2, err := New(withDefaults(c))
					require.NoError(t, err)
					require.Empty(t, runFiles(t, c.Dir), "New deletes the dead process's spill runs")
					if step <= steps {
						addAll(t, f2, clones(rows), 100)
					}
					_, err = f2.Flush(ctx, keyspace.Compose(11, 0), regions(keyspace.Compose(11, 0)))
					require.NoError(t, err)
					require.NoError(t, f2.Close())
				} else {
					require.NotEmpty(t, runFiles(t, c.Dir), "a failed flush keeps its spill runs")
					require.EqualValues(t, len(rows), f.Stats().BufferedRow, "the rows went back")
					m2, err := f.Flush(ctx, keyspace.Compose(11, 0), regions(keyspace.Compose(11, 0)))
					require.NoError(t, err)
					require.Equal(t, all, readMeta(t, st, m2), "the retry writes every row")
					require.Empty(t, runFiles(t, c.Dir))
					require.NoError(t, f.Close())
				}
				checkStorage(t, st)
				require.Equal(t, all, allStored(t, st), "nothing lost")
				for _, k := range up.keys {
					require.True(t, strings.HasPrefix(k, logfile.LogPrefix) || strings.HasPrefix(k, logfile.MetaPrefix), k)
				}
			})
		}
	}
}

func withDefaults(c Config) Config {
	c.StoreID, c.Task = testStore, "t1"
	return c
}

// TestUploadFailsWithConcurrency fails one data file among several uploads
// in flight, using the storage package's own fault wrapper.
func TestUploadFailsWithConcurrency(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(23, 24))
	st := memStorage(t)
	faulty := storagetest.NewFaulty(st)
	// Every data file upload fails after 10 KiB, twice.
	faulty.Inject(storagetest.Fault{Op: storagetest.OpPut, Times: 2, Err: errInjected, After: 10 << 10})
	f := newFlusher(t, Config{Storage: faulty, Settings: Settings{FileTarget: 64 << 10, UploadConcurrency: 4}})
	rows := genRows(rng, 2000, 1<<30, 300)
	kept := addAll(t, f, rows, 100)
	_, err := f.Flush(ctx, keyspace.Compose(20, 0), nil)
	require.ErrorIs(t, err, errInjected)
	require.Empty(t, metas(t, st))
	m, err := f.Flush(ctx, keyspace.Compose(21, 0), nil)
	if err != nil { // the second injected fault may hit this flush
		require.ErrorIs(t, err, errInjected)
		m, err = f.Flush(ctx, keyspace.Compose(22, 0), nil)
	}
	require.NoError(t, err)
	require.Equal(t, want(kept), readMeta(t, st, m))
	checkStorage(t, st)
}

func TestFlushCancelled(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	st := memStorage(t)
	f := newFlusher(t, Config{Storage: st})
	kept := addAll(t, f, genRows(rng, 500, 1<<30, 100), 50)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.Flush(ctx, keyspace.Compose(30, 0), nil)
	require.ErrorIs(t, err, context.Canceled)
	m, err := f.Flush(context.Background(), keyspace.Compose(31, 0), nil)
	require.NoError(t, err)
	require.Equal(t, want(kept), readMeta(t, st, m))
}
