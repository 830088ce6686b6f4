package flush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

var _ Uploader = storage.Storage(nil)

const testStore = 7

// genRows returns n rows with keys drawn from keySpace distinct keys, so
// that some keys repeat with other commit timestamps. Values are random
// (incompressible) bytes of valueLen.
func genRows(rng *rand.Rand, n, keySpace, valueLen int) []logfile.Row {
	rows := make([]logfile.Row, n)
	for i := range rows {
		ts := 1000 + rng.Uint64N(1<<40)
		r := logfile.Row{
			Key:      []byte(fmt.Sprintf("key-%08d", rng.IntN(keySpace))),
			CommitTS: ts,
			StartTS:  ts - 1 - rng.Uint64N(100),
			Op:       logfile.OpPut,
		}
		switch rng.IntN(10) {
		case 0:
			r.Op = logfile.OpDelete
		case 1:
			r.Value = []byte{}
		default:
			r.Value = make([]byte, valueLen)
			for j := range r.Value {
				r.Value[j] = byte(rng.Uint32())
			}
		}
		if rng.IntN(4) == 0 {
			r.HasOldValue = true
			r.OldValue = []byte("old")
		}
		rows[i] = r
	}
	return rows
}

// clones deep-copies rows: Add takes ownership, tests keep the copy.
func clones(rows []logfile.Row) []logfile.Row {
	out := make([]logfile.Row, len(rows))
	for i := range rows {
		out[i] = *rows[i].Clone()
	}
	return out
}

// want sorts and dedupes rows as a flush must write them.
func want(rows []logfile.Row) []logfile.Row {
	ptrs := make([]*logfile.Row, len(rows))
	for i := range rows {
		ptrs[i] = &rows[i]
	}
	slices.SortStableFunc(ptrs, logfile.Compare)
	out := make([]logfile.Row, 0, len(ptrs))
	for i, r := range ptrs {
		if i > 0 && logfile.Compare(ptrs[i-1], r) == 0 {
			continue
		}
		out = append(out, norm(*r))
	}
	return out
}

// norm makes rows comparable after a Parquet round trip, which does not
// keep nil versus empty.
func norm(r logfile.Row) logfile.Row {
	if r.Op == logfile.OpPut && r.Value == nil {
		r.Value = []byte{}
	}
	if !r.HasOldValue {
		r.OldValue = nil
	} else if r.OldValue == nil {
		r.OldValue = []byte{}
	}
	return r
}

// readFile decodes one data file from storage and checks its meta entry.
func readFile(t *testing.T, st storage.Storage, df *pitrpb.DataFile) []logfile.Row {
	t.Helper()
	ctx := context.Background()
	b, err := st.Get(ctx, df.Path)
	require.NoError(t, err, "data file %s referenced by a meta", df.Path)
	require.EqualValues(t, df.Size, len(b), df.Path)
	sum := sha256.Sum256(b)
	require.Equal(t, df.Sha256, sum[:], df.Path)
	rd, err := logfile.NewReader(bytes.NewReader(b), int64(len(b)))
	require.NoError(t, err)
	it := rd.Iter(nil, nil)
	defer it.Close()
	var rows []logfile.Row
	for it.Next() {
		rows = append(rows, norm(*it.Row().Clone()))
	}
	require.NoError(t, it.Err())
	require.EqualValues(t, df.Rows, len(rows), df.Path)
	if len(rows) > 0 {
		require.Equal(t, df.MinKey, rows[0].Key)
		require.Equal(t, df.MaxKey, rows[len(rows)-1].Key)
	}
	return rows
}

// metas returns every meta in storage, in name order.
func metas(t *testing.T, st storage.Storage) []*pitrpb.Meta {
	t.Helper()
	ctx := context.Background()
	var out []*pitrpb.Meta
	require.NoError(t, st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		b, err := st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(b)
		if err != nil {
			return err
		}
		out = append(out, m)
		return nil
	}))
	return out
}

// readMeta returns the rows of every file of m, in file order.
func readMeta(t *testing.T, st storage.Storage, m *pitrpb.Meta) []logfile.Row {
	t.Helper()
	var rows []logfile.Row
	for _, df := range m.Files {
		rows = append(rows, readFile(t, st, df)...)
	}
	return rows
}

// checkStorage asserts the commit-order invariant (I5) on what is in
// storage: every meta decodes, and every file it references exists, with
// the size and sha256 the meta records, and decodes.
func checkStorage(t *testing.T, st storage.Storage) {
	t.Helper()
	for _, m := range metas(t, st) {
		readMeta(t, st, m)
	}
}

// allStored returns the union of the rows of every meta, sorted and
// deduplicated (what a restore would see).
func allStored(t *testing.T, st storage.Storage) []logfile.Row {
	t.Helper()
	var rows []logfile.Row
	for _, m := range metas(t, st) {
		rows = append(rows, readMeta(t, st, m)...)
	}
	return want(rows)
}

func memStorage(t *testing.T) storage.Storage {
	t.Helper()
	st, err := storage.Open(context.Background(), "mem://")
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func newFlusher(t *testing.T, cfg Config) *Flusher {
	t.Helper()
	if cfg.StoreID == 0 {
		cfg.StoreID = testStore
	}
	if cfg.Task == "" {
		cfg.Task = "t1"
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})
	}
	f, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, f.Close()) })
	return f
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// recorder is an Uploader that records every key it stores and fails the
// test when a key is stored twice: data files are immutable and metas are
// written once per flush ts.
type recorder struct {
	storage.Storage
	t    *testing.T
	mu   sync.Mutex
	keys map[string]int
}

func newRecorder(t *testing.T, st storage.Storage) *recorder {
	return &recorder{Storage: st, t: t, keys: map[string]int{}}
}

func (r *recorder) PutReader(ctx context.Context, key string, rd io.Reader, size int64) error {
	r.mu.Lock()
	r.keys[key]++
	n := r.keys[key]
	r.mu.Unlock()
	if n > 1 {
		r.t.Errorf("key %s stored %d times", key, n)
	}
	return r.Storage.PutReader(ctx, key, rd, size)
}

func (r *recorder) dataKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k := range r.keys {
		if strings.HasPrefix(k, logfile.LogPrefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// addAll adds rows in batches of batch, keeping a copy for the check.
func addAll(t *testing.T, f *Flusher, rows []logfile.Row, batch int) []logfile.Row {
	t.Helper()
	kept := clones(rows)
	for i := 0; i < len(rows); i += batch {
		require.NoError(t, f.Add(context.Background(), rows[i:min(i+batch, len(rows))]))
	}
	return kept
}

// runFiles lists the spill runs in dir.
func runFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), runSuffix) {
			out = append(out, e.Name())
		}
	}
	return out
}
