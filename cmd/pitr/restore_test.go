package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
)

func TestRestoreExitCodes(t *testing.T) {
	empty := "file://" + t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no storage", []string{"restore", "--to", "1", "--pd", "x"}, cli.ExitUsage, "--storage is required"},
		{"no to", []string{"restore", "--storage", empty, "--pd", "x"}, cli.ExitUsage, "--to is required"},
		{"no pd", []string{"restore", "--storage", empty, "--to", "1"}, cli.ExitUsage, "--pd is required"},
		{"bad to", []string{"restore", "--storage", empty, "--to", "yesterday", "--dry-run"}, cli.ExitUsage, "RFC 3339"},
		{"snapshot, dry run", []string{"restore", "--storage", empty, "--to", "1", "--snapshot", empty, "--dry-run"}, cli.ExitNotBackup, "has no pitr.lock"},
		{"bad memory", []string{"restore", "--storage", empty, "--to", "1", "--dry-run", "--memory", "lots"}, cli.ExitUsage, "--memory"},
		{"wrong storage, dry run", []string{"restore", "--storage", empty, "--to", "2026-01-01T00:00:00Z", "--dry-run"}, cli.ExitNotBackup, "has no pitr.lock"},
		{"wrong storage", []string{"restore", "--storage", empty, "--to", "1", "--pd", "127.0.0.1:1"}, cli.ExitNotBackup, "nothing was written to the target"},
		{"verify wrong storage", []string{"verify", "--storage", empty}, cli.ExitNotBackup, "pitr verify: not a pitr backup"},
		{"verify bad to", []string{"verify", "--storage", empty, "--to", "soon"}, cli.ExitUsage, "--to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.args...)
			require.Error(t, err)
			require.Equal(t, tc.code, cli.Code(err), "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			require.False(t, strings.Contains(err.Error(), "\n"), "one line: %q", err.Error())
		})
	}
}

func TestRestoreErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{restore.ErrOutOfRange, cli.ExitOutOfRange},
		{restore.ErrCorrupt, cli.ExitCorrupt},
		{restore.ErrChecksum, cli.ExitCorrupt},
		{restore.ErrMissing, cli.ExitMissing},
		{restore.ErrNotBackup, cli.ExitNotBackup},
		{restore.ErrTargetNotEmpty, cli.ExitTargetNotEmpty},
		{restore.ErrTargetInUse, cli.ExitTargetNotEmpty},
		{restore.ErrFormat, cli.ExitFormat},
		{restore.ErrNoBase, cli.ExitNoBase},
		{restore.ErrUnavailable, cli.ExitUnavailable},
		{context.Canceled, cli.ExitFailure},
		{errors.New("boom"), cli.ExitFailure},
	} {
		err := restoreError("pitr restore", fmt.Errorf("wrapped: %w", tc.err))
		require.Equal(t, tc.code, cli.Code(err), "%v", tc.err)
		require.True(t, strings.HasPrefix(err.Error(), "pitr restore: "))
	}
}

// cliBackup writes a small log backup (two flushes of one store) into a
// file:// root and returns its URL, the checkpoint and one data file's path.
func cliBackup(t *testing.T) (url string, start, cp uint64, dataFile string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	url = "file://" + dir
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	start = keyspace.FromTime(time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC))
	put := func(key string) func([]byte, error) {
		return func(b []byte, err error) {
			require.NoError(t, err)
			require.NoError(t, st.Put(ctx, key, b))
		}
	}
	put(logfile.LockPath)(logfile.EncodeLock(&pitrpb.Lock{Task: "cli"}))
	put(logfile.TaskPath)(logfile.EncodeTaskInfo(&pitrpb.TaskInfo{Name: "cli", StartTs: start, StartedEmpty: true}))
	f, err := flush.New(flush.Config{StoreID: 1, Task: "cli", Dir: t.TempDir(), Storage: st})
	require.NoError(t, err)
	defer f.Close()
	cp = start
	for w := 1; w <= 2; w++ {
		var rows []logfile.Row
		for i := 0; i < 50; i++ {
			ts := start + uint64(w*100+i)
			rows = append(rows, logfile.Row{Key: []byte(fmt.Sprintf("cli/%03d", i)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprintf("v%d", w))})
		}
		require.NoError(t, f.Add(ctx, rows))
		m, err := f.Flush(ctx, start+uint64(w*100+99), []*pitrpb.RegionCoverage{{RegionId: 1, FromTs: cp, ToTs: start + uint64(w*100+99)}})
		require.NoError(t, err)
		dataFile = filepath.Join(dir, filepath.FromSlash(m.Files[0].Path))
		cp = start + uint64(w*100+99)
	}
	put(logfile.CheckpointPath)(logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: "cli", Ts: cp}))
	return url, start, cp, dataFile
}

func TestRestoreCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	url, start, cp, dataFile := cliBackup(t)
	ts := func(v uint64) string { return strconv.FormatUint(v, 10) }

	out, err := run("verify", "--storage", url, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, `ok: task "cli", 2 metas, 2 files`)

	out, err = run("restore", "--storage", url, "--to", ts(start+150), "--dry-run")
	require.NoError(t, err)
	require.Contains(t, out, "restore plan for task \"cli\"")
	require.Contains(t, out, "files         1 to read (1 pruned")

	_, err = run("restore", "--storage", url, "--to", ts(cp+1), "--dry-run")
	require.Equal(t, cli.ExitOutOfRange, cli.Code(err), "%v", err)
	require.Contains(t, err.Error(), "restorable range is [")

	p, err := playground.Start(context.Background(), playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	progress := filepath.Join(t.TempDir(), "p.json")
	out, err = run("restore", "--storage", url, "--to", ts(start+150), "--pd", p.PDAddr(), "--progress-file", progress, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "restored to "+ts(start+150))
	require.Contains(t, out, "50 rows")
	v, ok, err := p.Engine.Get([]byte("cli/007"), start+150, mvcc.ReadOptions{})
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "v1", string(v))

	// Now the target holds data: another restore is refused.
	_, err = run("restore", "--storage", url, "--to", ts(cp), "--pd", p.PDAddr(), "--progress-file", progress+"2", "--no-progress")
	require.Equal(t, cli.ExitTargetNotEmpty, cli.Code(err), "%v", err)

	// --force into a target holding another key in the task ranges: every
	// range is written, then the checksum differs (exit 11), until
	// --no-checksum accepts it.
	kv, err := workload.Connect(context.Background(), []string{p.PDAddr()})
	require.NoError(t, err)
	defer kv.Close()
	txn, err := kv.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte("cli/extra"), []byte("x")))
	require.NoError(t, txn.Commit(context.Background()))
	args := []string{"restore", "--storage", url, "--to", ts(cp), "--pd", p.PDAddr(), "--progress-file", progress + "3", "--no-progress", "--force"}
	_, err = run(args...)
	require.Equal(t, cli.ExitCorrupt, cli.Code(err), "%v", err)
	require.Contains(t, err.Error(), "checksum mismatch: range [-inf, +inf) of the target: expected crc64xor=")
	require.Contains(t, err.Error(), "rerun with --no-checksum")
	out, err = run(append(args, "--no-checksum")...)
	require.NoError(t, err, out)

	flip, err := os.ReadFile(dataFile)
	require.NoError(t, err)
	flip[len(flip)/2] ^= 1
	require.NoError(t, os.WriteFile(dataFile, flip, 0o644))
	_, err = run("verify", "--storage", url, "--no-progress")
	require.Equal(t, cli.ExitCorrupt, cli.Code(err), "%v", err)
	require.NoError(t, os.Remove(dataFile))
	_, err = run("verify", "--storage", url, "--no-progress")
	require.Equal(t, cli.ExitMissing, cli.Code(err), "%v", err)
}

// TestRestoreErrorAfterWrite (audit F5): an error once the target holds
// part of the restore never says "nothing was written"; it says how far
// the restore got and to rerun the same command. Here an earlier run wrote
// (its progress file says so) and then a data file rotted: the rerun is
// refused as corrupt (exit 11) and says the target holds part of it.
func TestRestoreErrorAfterWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	url, _, cp, dataFile := cliBackup(t)
	p, err := playground.Start(context.Background(), playground.Config{Stores: 1})
	require.NoError(t, err)
	defer p.Close()
	progress := filepath.Join(t.TempDir(), "p.json")
	started := fmt.Sprintf(`{"version": 2, "storage": %q, "task": "cli", "restore_ts": %d, "target_cluster_id": %d, "started_unix_ms": 1, "done": []}`,
		url, cp, p.Cluster.ID())
	require.NoError(t, os.WriteFile(progress, []byte(started), 0o600))
	flip, err := os.ReadFile(dataFile)
	require.NoError(t, err)
	flip[len(flip)/2] ^= 1
	require.NoError(t, os.WriteFile(dataFile, flip, 0o644))

	_, err = run("restore", "--storage", url, "--to", strconv.FormatUint(cp, 10), "--pd", p.PDAddr(), "--progress-file", progress, "--no-progress")
	require.Equal(t, cli.ExitCorrupt, cli.Code(err), "%v", err)
	msg := err.Error()
	require.NotContains(t, msg, "nothing was written")
	require.Contains(t, msg, "the target already holds part of this restore (0 of 1 key ranges done): rerun the same command to resume it (progress file "+progress+")")
	require.NotContains(t, msg, "\n")
}

func TestRestoreErrorWritten(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
		want string
	}{
		{"refusal", fmt.Errorf("x: %w", restore.ErrCorrupt), cli.ExitCorrupt, "; nothing was written to the target"},
		{"unavailable before writing", fmt.Errorf("x: %w", restore.ErrUnavailable), cli.ExitUnavailable, "; nothing was written to the target"},
		{"corrupt after writing", &restore.WrittenError{Err: fmt.Errorf("x: %w", restore.ErrCorrupt), ProgressFile: "/p.json", UnitsDone: 3, Units: 7}, cli.ExitCorrupt,
			"; the target already holds part of this restore (3 of 7 key ranges done): rerun the same command to resume it (progress file /p.json)"},
		{"cancelled after writing", &restore.WrittenError{Err: context.Canceled, ProgressFile: "/p.json", Units: 2}, cli.ExitFailure, "(0 of 2 key ranges done)"},
		{"finished, GC not set back", &restore.WrittenError{Err: fmt.Errorf("x: %w", restore.ErrGCNotRestored), Units: 2, Finished: true}, cli.ExitFailure,
			"; the restore itself finished (all 2 key ranges are in the target)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := restoreError("pitr restore", tc.err)
			require.Equal(t, tc.code, cli.Code(err))
			require.True(t, strings.HasSuffix(err.Error(), tc.want) || strings.Contains(err.Error(), tc.want), err.Error())
			if _, ok := tc.err.(*restore.WrittenError); ok {
				require.NotContains(t, err.Error(), "nothing was written")
			}
		})
	}
}

// TestRestoreMemoryFlags (audit F8): --memory and --concurrency that leave
// a reader less than restore.MinReadBudget are usage errors, one line.
func TestRestoreMemoryFlags(t *testing.T) {
	empty := "file://" + t.TempDir()
	for _, tc := range []struct {
		name        string
		memory, con string
		code        int
		msg         string
	}{
		{"64MiB, default concurrency", "64MiB", "8", cli.ExitUsage, "--memory 64MiB is too small for concurrency 8: its 10 chunk buffers take 240MiB and its 2 readers need 16MiB each; use at least 272MiB, or a lower concurrency"},
		{"1GiB, concurrency 64", "1GiB", "64", cli.ExitUsage, "use at least 2176MiB"},
		{"1GiB, concurrency 32", "1GiB", "32", cli.ExitUsage, "too small for concurrency 32"},
		{"64MiB, concurrency 1", "64MiB", "1", cli.ExitNotBackup, "has no pitr.lock"},
		{"1GiB, concurrency 8", "1GiB", "8", cli.ExitNotBackup, "has no pitr.lock"},
		{"272MiB, concurrency 8", "272MiB", "8", cli.ExitNotBackup, "has no pitr.lock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run("restore", "--storage", empty, "--to", "2026-01-01T00:00:00Z", "--dry-run", "--memory", tc.memory, "--concurrency", tc.con)
			require.Equal(t, tc.code, cli.Code(err), "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

// TestLogCLI: pitr log shows a root's restorable range, metas, windows and
// holes, as text and as JSON, without a cluster; bad input is one line.
func TestLogCLI(t *testing.T) {
	url, start, cp, _ := cliBackup(t)
	out, err := run("log", "--storage", url)
	require.NoError(t, err)
	require.Contains(t, out, "Task:        cli")
	require.Contains(t, out, fmt.Sprintf("Restorable:  [%s, %s]", keyspace.Format(start), keyspace.Format(cp)))
	require.Contains(t, out, "Metas:       2 (")
	require.Contains(t, out, "1 keyframes, 1 continuing a chain, 0 of format 1-2")
	require.Contains(t, out, "Holes:       none")

	out, err = run("log", "--storage", url, "--json")
	require.NoError(t, err)
	var li restore.LogInfo
	require.NoError(t, json.Unmarshal([]byte(out), &li))
	require.Equal(t, cp, li.Checkpoint)
	require.Equal(t, 2, li.Files)
	require.Len(t, li.Windows, 1)

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"log"}, cli.ExitUsage, "--storage is required"},
		{[]string{"log", "--storage", url, "--window", "0s"}, cli.ExitUsage, "--window must be positive"},
		{[]string{"log", "--storage", "file://" + t.TempDir()}, cli.ExitNotBackup, "not a pitr backup"},
	} {
		_, err := run(tc.args...)
		require.Error(t, err)
		require.Equal(t, tc.code, cli.Code(err), "%v", err)
		require.Contains(t, err.Error(), tc.msg)
	}
}

// TestTruncateCLI: pitr truncate's refusals are one line with their exit
// status, and the root is untouched by them.
func TestTruncateCLI(t *testing.T) {
	url, start, cp, _ := cliBackup(t)
	ts := func(v uint64) string { return strconv.FormatUint(v, 10) }
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"truncate", "--until", "1"}, cli.ExitUsage, "--storage is required"},
		{[]string{"truncate", "--storage", url}, cli.ExitUsage, "--until is required"},
		{[]string{"truncate", "--storage", url, "--until", "soon"}, cli.ExitUsage, "--until"},
		{[]string{"truncate", "--storage", url, "--until", ts(cp + 1)}, cli.ExitOutOfRange, "past the global checkpoint"},
		{[]string{"truncate", "--storage", url, "--until", ts(start + 150)}, cli.ExitNoBase, "no usable snapshot at or before"},
		{[]string{"truncate", "--storage", url, "--until", ts(start + 150), "--dry-run"}, cli.ExitNoBase, "pitr backup full"},
	} {
		_, err := run(tc.args...)
		require.Error(t, err, "%v", tc.args)
		require.Equal(t, tc.code, cli.Code(err), "%v", err)
		require.Contains(t, err.Error(), tc.msg)
		require.False(t, strings.Contains(err.Error(), "\n"), "one line: %q", err.Error())
	}
	out, err := run("verify", "--storage", url, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "2 metas, 2 files")
}

// TestCompactCLI: pitr compact on a root whose only chain is still its
// store's newest compacts nothing; its refusals are one line with their
// exit status.
func TestCompactCLI(t *testing.T) {
	url, _, cp, _ := cliBackup(t)
	out, err := run("compact", "--storage", url)
	require.NoError(t, err)
	require.Contains(t, out, "compact: 0 chains")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"compact", "--storage", url, "--until", strconv.FormatUint(cp+1, 10)}, cli.ExitOutOfRange, "past the global checkpoint"},
		{[]string{"compact", "--storage", url, "--file-target", "big"}, cli.ExitUsage, "--file-target"},
		{[]string{"compact", "--storage", "file://" + t.TempDir()}, cli.ExitNotBackup, "not a pitr backup"},
	} {
		_, err := run(tc.args...)
		require.Error(t, err, "%v", tc.args)
		require.Equal(t, tc.code, cli.Code(err), "%v", err)
		require.Contains(t, err.Error(), tc.msg)
	}
}
