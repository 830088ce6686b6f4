package local

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/volume"
)

var _ volume.Provider = (*Provider)(nil)

// walWriter writes the way the playground's engine does: records appended
// to one segment at a time, a state file replaced by rename that says how
// many records it holds, and segments deleted once the state covers them.
type walWriter struct {
	dir  string
	seq  atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

func startWAL(t *testing.T, dir string) *walWriter {
	w := &walWriter{dir: dir, stop: make(chan struct{})}
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		seg := 0
		f, _ := os.Create(filepath.Join(dir, fmt.Sprintf("wal-%06d.log", seg)))
		var segs []int
		segs = append(segs, seg)
		for n := int64(1); ; n++ {
			select {
			case <-w.stop:
				f.Close()
				return
			default:
			}
			_, _ = f.Write([]byte(strconv.FormatInt(n, 10) + "\n"))
			w.seq.Store(n)
			if n%50 == 0 {
				f.Close()
				seg++
				f, _ = os.Create(filepath.Join(dir, fmt.Sprintf("wal-%06d.log", seg)))
				segs = append(segs, seg)
			}
			if n%37 == 0 {
				// The state holds every record of the sealed segments.
				sealed := (n / 50) * 50
				b, _ := json.Marshal(map[string]int64{"seq": sealed})
				tmp := filepath.Join(dir, "sub", "state.json.tmp")
				_ = os.WriteFile(tmp, b, 0o644)
				_ = os.Rename(tmp, filepath.Join(dir, "sub", "state.json"))
				for len(segs) > 1 && int64(segs[0]+1)*50 <= sealed {
					_ = os.Remove(filepath.Join(dir, fmt.Sprintf("wal-%06d.log", segs[0])))
					segs = segs[1:]
				}
			}
		}
	}()
	return w
}

func (w *walWriter) halt() { close(w.stop); w.wg.Wait() }

// checkCrashState fails unless dir is a state the writer passed through:
// the records after the state's seq follow it without a gap, in segment
// order, a torn last line allowed.
func checkCrashState(t *testing.T, dir string) int64 {
	t.Helper()
	var st struct{ Seq int64 }
	if b, err := os.ReadFile(filepath.Join(dir, "sub", "state.json")); err == nil {
		require.NoError(t, json.Unmarshal(b, &st))
	}
	names, err := filepath.Glob(filepath.Join(dir, "wal-*.log"))
	require.NoError(t, err)
	sort.Strings(names)
	next := st.Seq + 1
	first := true
	for i, name := range names {
		f, err := os.Open(name)
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			n, err := strconv.ParseInt(sc.Text(), 10, 64)
			if err != nil && i == len(names)-1 {
				break // torn tail
			}
			require.NoError(t, err, "%s", name)
			if n <= st.Seq {
				continue
			}
			if first && n != next {
				f.Close()
				t.Fatalf("%s: first record after the state's %d is %d", name, st.Seq, n)
			}
			first = false
			require.Equal(t, next, n, "%s: a gap", name)
			next++
		}
		f.Close()
	}
	return next - 1
}

func TestSnapshotIsACrashState(t *testing.T) {
	root := t.TempDir()
	vol := filepath.Join(root, "vol")
	p, err := New(filepath.Join(root, "prov"))
	require.NoError(t, err)
	w := startWAL(t, vol)
	defer w.halt()
	ctx := context.Background()
	var ids []string
	var seqs []int64
	for i := 0; i < 30; i++ {
		for w.seq.Load() < int64(i+1)*40 {
			time.Sleep(time.Millisecond)
		}
		before := w.seq.Load()
		snaps, err := p.Snapshot(ctx, volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: vol, Type: "storage.data-dir"}}}, map[string]string{"i": fmt.Sprint(i)})
		require.NoError(t, err)
		require.Len(t, snaps, 1)
		require.Equal(t, vol, snaps[0].VolumeID)
		ids = append(ids, snaps[0].ID)
		seqs = append(seqs, before)
	}
	w.halt()
	w.stop = make(chan struct{}) // halt again in defer: a no-op wait
	w.wg = sync.WaitGroup{}
	for i, id := range ids {
		require.NoError(t, p.Wait(id))
		st, err := p.Status(ctx, []string{id})
		require.NoError(t, err)
		require.Equal(t, volume.Completed, st[0].State, st[0].Message)
		require.Equal(t, 100, st[0].Progress)
		v, err := p.CreateVolume(ctx, id, volume.CreateOptions{})
		require.NoError(t, err)
		require.Equal(t, "storage.data-dir", v.Type)
		last := checkCrashState(t, v.ID)
		// The point in time is no earlier than the call.
		require.GreaterOrEqual(t, last, seqs[i], "snapshot %d", i)
	}
}

func TestSnapshotStoreVolumesTogether(t *testing.T) {
	root := t.TempDir()
	kv, raft := filepath.Join(root, "kv"), filepath.Join(root, "raft")
	require.NoError(t, os.MkdirAll(filepath.Join(kv, "a", "b"), 0o755))
	require.NoError(t, os.MkdirAll(raft, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(kv, "a", "b", "x"), []byte("kv-x"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(raft, "meta.json"), []byte(`{"r":1}`), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(kv, "empty"), 0o755))
	p, err := New(filepath.Join(root, "prov"))
	require.NoError(t, err)
	ctx := context.Background()
	snaps, err := p.Snapshot(ctx, volume.Store{StoreID: 7, Volumes: []volume.Volume{{ID: kv, Type: "storage.data-dir"}, {ID: raft, Type: "raft-engine.dir"}}}, nil)
	require.NoError(t, err)
	require.Len(t, snaps, 2)
	// Changes after Snapshot returned are not in it.
	require.NoError(t, os.WriteFile(filepath.Join(raft, "meta.json.tmp"), []byte(`{"r":2}`), 0o644))
	require.NoError(t, os.Rename(filepath.Join(raft, "meta.json.tmp"), filepath.Join(raft, "meta.json")))
	f, err := os.OpenFile(filepath.Join(kv, "a", "b", "x"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, _ = f.WriteString("-later")
	f.Close()
	for _, s := range snaps {
		require.NoError(t, p.Wait(s.ID))
	}
	v0, err := p.CreateVolume(ctx, snaps[0].ID, volume.CreateOptions{})
	require.NoError(t, err)
	v1, err := p.CreateVolume(ctx, snaps[1].ID, volume.CreateOptions{})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(v0.ID, "a", "b", "x"))
	require.NoError(t, err)
	require.Equal(t, "kv-x", string(b))
	require.DirExists(t, filepath.Join(v0.ID, "empty"))
	b, err = os.ReadFile(filepath.Join(v1.ID, "meta.json"))
	require.NoError(t, err)
	require.Equal(t, `{"r":1}`, string(b))
	require.Equal(t, "raft-engine.dir", v1.Type)
	// A volume is a copy: writing it leaves the snapshot as it was.
	require.NoError(t, os.WriteFile(filepath.Join(v1.ID, "meta.json"), []byte("changed"), 0o644))
	v2, err := p.CreateVolume(ctx, snaps[1].ID, volume.CreateOptions{})
	require.NoError(t, err)
	b, err = os.ReadFile(filepath.Join(v2.ID, "meta.json"))
	require.NoError(t, err)
	require.Equal(t, `{"r":1}`, string(b))
	require.NotEqual(t, v1.ID, v2.ID)
}

func TestStatusResumesACopyADeadProcessLeft(t *testing.T) {
	root := t.TempDir()
	vol := filepath.Join(root, "vol")
	require.NoError(t, os.MkdirAll(vol, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(vol, "f"), []byte(strings.Repeat("z", 1<<20)), 0o644))
	p, err := New(filepath.Join(root, "prov"))
	require.NoError(t, err)
	ctx := context.Background()
	// The pass alone, as if the process died right after it.
	ids, cuts, err := p.pass(volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: vol}}}, nil)
	require.NoError(t, err)
	require.NoError(t, writeJSON(filepath.Join(p.snapDir(ids[0]), "cut.json"), cuts[0]))
	// The volume changes afterwards; the links keep the cut.
	require.NoError(t, os.Remove(filepath.Join(vol, "f")))

	q, err := New(filepath.Join(root, "prov"))
	require.NoError(t, err)
	st, err := q.Status(ctx, ids)
	require.NoError(t, err)
	require.Equal(t, volume.Pending, st[0].State)
	require.NoError(t, q.Wait(ids[0]))
	st, err = q.Status(ctx, ids)
	require.NoError(t, err)
	require.Equal(t, volume.Completed, st[0].State)
	v, err := q.CreateVolume(ctx, ids[0], volume.CreateOptions{})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(v.ID, "f"))
	require.NoError(t, err)
	require.Len(t, b, 1<<20)
}

func TestUnknownAndRefused(t *testing.T) {
	root := t.TempDir()
	p, err := New(filepath.Join(root, "prov"))
	require.NoError(t, err)
	ctx := context.Background()
	_, err = p.Status(ctx, []string{"snap-0123456789abcdef"})
	require.True(t, errors.Is(err, volume.ErrNotFound), "%v", err)
	_, err = p.Status(ctx, []string{"../../etc"})
	require.True(t, errors.Is(err, volume.ErrNotFound), "%v", err)
	var ve *volume.Error
	require.True(t, errors.As(err, &ve))
	require.NotContains(t, err.Error(), "\n")
	require.NoError(t, p.Delete(ctx, "snap-0123456789abcdef"))
	_, err = p.Snapshot(ctx, volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: "relative/dir"}}}, nil)
	require.ErrorContains(t, err, "absolute directory")
	_, err = p.Snapshot(ctx, volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: filepath.Join(root, "missing")}}}, nil)
	require.Error(t, err)
	_, err = p.CreateVolume(ctx, "snap-0123456789abcdef", volume.CreateOptions{})
	require.True(t, errors.Is(err, volume.ErrNotFound), "%v", err)

	vol := filepath.Join(root, "vol")
	require.NoError(t, os.MkdirAll(vol, 0o755))
	require.NoError(t, os.Symlink("/etc/hostname", filepath.Join(vol, "link")))
	_, err = p.Snapshot(ctx, volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: vol}}}, nil)
	require.ErrorContains(t, err, "not a regular file")

	require.NoError(t, os.Remove(filepath.Join(vol, "link")))
	require.NoError(t, os.WriteFile(filepath.Join(vol, "f"), []byte("x"), 0o644))
	snaps, err := p.Snapshot(ctx, volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: vol}}}, nil)
	require.NoError(t, err)
	require.NoError(t, p.Delete(ctx, snaps[0].ID))
	_, err = p.Status(ctx, []string{snaps[0].ID})
	require.True(t, errors.Is(err, volume.ErrNotFound), "%v", err)
}
