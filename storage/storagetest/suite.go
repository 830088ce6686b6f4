// Package storagetest holds the conformance suite every storage.Storage must
// pass, and helpers that start real storage servers (MinIO, Azurite,
// fake-gcs-server) on loopback ports for tests.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
)

// Options tunes the suite; zero values mean the defaults.
type Options struct {
	LargeSize int64 // size of the streamed object; default 64 MiB
	ManyKeys  int   // keys in the pagination case; default 1100 (> one 1000-key page)
	Racers    int   // goroutines racing in CreateIfAbsent; default 8
}

// Run runs the conformance suite. newStorage must return an empty Storage
// (a fresh bucket or prefix) and arrange its Close with t.Cleanup.
func Run(t *testing.T, newStorage func(t *testing.T) storage.Storage) {
	RunWithOptions(t, newStorage, Options{})
}

// RunWithOptions is Run with tuning.
func RunWithOptions(t *testing.T, newStorage func(t *testing.T) storage.Storage, o Options) {
	if o.LargeSize == 0 {
		o.LargeSize = 64 << 20
	}
	if o.ManyKeys == 0 {
		o.ManyKeys = 1100
	}
	if o.Racers == 0 {
		o.Racers = 8
	}
	cases := []struct {
		name string
		fn   func(t *testing.T, s storage.Storage, o Options)
	}{
		{"put_get_roundtrip", testRoundtrip},
		{"overwrite", testOverwrite},
		{"empty_object", testEmpty},
		{"ranged_get", testRange},
		{"list_prefix_lexical", testListLexical},
		{"list_many_keys", testListMany},
		{"delete", testDelete},
		{"exists_stat", testExistsStat},
		{"not_found", testNotFound},
		{"create_if_absent", testCreateIfAbsent},
		{"create_if_absent_race", testCreateRace},
		{"put_if_match", testPutIfMatch},
		{"put_if_match_race", testPutIfMatchRace},
		{"large_streamed", testLarge},
		{"odd_keys", testOddKeys},
		{"invalid_keys", testInvalidKeys},
		{"put_reader_atomic", testPutReaderAtomic},
		{"put_reader_cancel", testPutReaderCancel},
		{"put_reader_unknown_size", testUnknownSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, newStorage(t), o)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readAll returns a function that reads and closes what GetRange or
// NewReader returned: readAll(t)(s.NewReader(ctx, k)).
func readAll(t *testing.T) func(rc io.ReadCloser, err error) []byte {
	return func(rc io.ReadCloser, err error) []byte {
		t.Helper()
		require.NoError(t, err)
		b, err := io.ReadAll(rc)
		require.NoError(t, err)
		require.NoError(t, rc.Close())
		return b
	}
}

func listKeys(t *testing.T, s storage.Storage, prefix string) []string {
	t.Helper()
	keys := []string{}
	require.NoError(t, s.List(ctxT(t), prefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}))
	return keys
}

func testRoundtrip(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	data := []byte("hello, point in time")
	before := time.Now().Add(-time.Hour)
	require.NoError(t, s.Put(ctx, "a/b.txt", data))
	got, err := s.Get(ctx, "a/b.txt")
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Equal(t, data, readAll(t)(s.NewReader(ctx, "a/b.txt")))
	info, err := s.Stat(ctx, "a/b.txt")
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), info.Size)
	require.True(t, info.ModTime.After(before) && info.ModTime.Before(time.Now().Add(time.Hour)),
		"modtime %v is not about now", info.ModTime)
	require.NotEmpty(t, s.URL())
}

func testOverwrite(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	require.NoError(t, s.Put(ctx, "k", []byte("version one, longer")))
	require.NoError(t, s.Put(ctx, "k", []byte("v2")))
	got, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(got))
	info, err := s.Stat(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, int64(2), info.Size)
	require.Equal(t, []string{"k"}, listKeys(t, s, ""))
}

func testEmpty(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	require.NoError(t, s.Put(ctx, "empty", nil))
	require.NoError(t, s.PutReader(ctx, "empty2", bytes.NewReader(nil), 0))
	for _, k := range []string{"empty", "empty2"} {
		got, err := s.Get(ctx, k)
		require.NoError(t, err)
		require.Empty(t, got)
		ok, err := s.Exists(ctx, k)
		require.NoError(t, err)
		require.True(t, ok)
		info, err := s.Stat(ctx, k)
		require.NoError(t, err)
		require.Zero(t, info.Size)
		require.Empty(t, readAll(t)(s.NewReader(ctx, k)))
		require.Empty(t, readAll(t)(s.GetRange(ctx, k, 0, -1)))
		require.Empty(t, readAll(t)(s.GetRange(ctx, k, 0, 10)))
	}
	var sizes []int64
	require.NoError(t, s.List(ctx, "", func(oi storage.ObjectInfo) error {
		sizes = append(sizes, oi.Size)
		return nil
	}))
	require.Equal(t, []int64{0, 0}, sizes)
}

func testRange(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	p := NewPattern(7, 1000)
	data := p.Bytes(0, 1000)
	require.NoError(t, s.Put(ctx, "r/obj", data))
	cases := []struct {
		name      string
		off, n    int64
		want      []byte
		wantError error
	}{
		{name: "start", off: 0, n: 10, want: data[:10]},
		{name: "middle", off: 400, n: 100, want: data[400:500]},
		{name: "end", off: 990, n: 10, want: data[990:]},
		{name: "to_end", off: 500, n: -1, want: data[500:]},
		{name: "whole", off: 0, n: -1, want: data},
		{name: "past_end_truncated", off: 995, n: 100, want: data[995:]},
		{name: "zero_length", off: 10, n: 0, want: []byte{}},
		{name: "at_size", off: 1000, n: 10, want: []byte{}},
		{name: "at_size_to_end", off: 1000, n: -1, want: []byte{}},
		{name: "beyond_size", off: 1001, n: 1, wantError: storage.ErrInvalidRange},
		{name: "far_beyond_size_to_end", off: 5000, n: -1, wantError: storage.ErrInvalidRange},
		{name: "negative_offset", off: -1, n: 5, wantError: storage.ErrInvalidRange},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc, err := s.GetRange(ctx, "r/obj", c.off, c.n)
			if c.wantError != nil {
				require.ErrorIs(t, err, c.wantError)
				require.Nil(t, rc)
				return
			}
			got := readAll(t)(rc, err)
			require.Equal(t, len(c.want), len(got))
			require.True(t, bytes.Equal(c.want, got))
		})
	}
	_, err := s.GetRange(ctx, "r/missing", 0, 10)
	require.ErrorIs(t, err, storage.ErrNotFound)
	_, err = s.GetRange(ctx, "r/missing", 10, 10)
	require.ErrorIs(t, err, storage.ErrNotFound)
}

func testListLexical(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	// Chosen so that directory-walk order differs from key order:
	// "p/a-c" < "p/a.b" < "p/a/b" < "p/a0" because '-' < '.' < '/' < '0'.
	keys := []string{"p/a/b", "p/a-c", "p/a0", "p/a.b", "p/a/c/d", "p/A", "p/b", "p/ä", "p/~", "q", "pz"}
	for i, k := range keys {
		require.NoError(t, s.Put(ctx, k, bytes.Repeat([]byte{'x'}, i)), k)
	}
	sorted := append([]string(nil), keys...)
	sort.Strings(sorted)
	require.Equal(t, sorted, listKeys(t, s, ""))

	filter := func(prefix string) []string {
		out := []string{}
		for _, k := range sorted {
			if strings.HasPrefix(k, prefix) {
				out = append(out, k)
			}
		}
		return out
	}
	for _, prefix := range []string{"p/", "p/a", "p/a/", "p/a/c", "p/a.", "p", "p/ä", "nothing", "p/zz/", "q"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			require.Equal(t, filter(prefix), listKeys(t, s, prefix))
		})
	}

	// Sizes are reported.
	sizes := map[string]int64{}
	require.NoError(t, s.List(ctx, "p/", func(oi storage.ObjectInfo) error {
		sizes[oi.Key] = oi.Size
		return nil
	}))
	for i, k := range keys {
		if strings.HasPrefix(k, "p/") {
			require.Equal(t, int64(i), sizes[k], k)
		}
	}

	// A callback error stops the listing and comes back unchanged.
	stop := errors.New("stop here")
	n := 0
	err := s.List(ctx, "", func(storage.ObjectInfo) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	require.Equal(t, stop, err)
	require.Equal(t, 3, n)
}

func testListMany(t *testing.T, s storage.Storage, o Options) {
	ctx := ctxT(t)
	want := make([]string, o.ManyKeys)
	for i := range want {
		want[i] = fmt.Sprintf("many/k%05d", i)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				if err := s.Put(ctx, k, []byte(k)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	go func() {
		defer close(work)
		for _, k := range want {
			select {
			case work <- k:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, s.Put(ctx, "many-after", []byte("x")))
	require.NoError(t, s.Put(ctx, "man", []byte("x")))

	got := listKeys(t, s, "many/")
	require.Equal(t, len(want), len(got))
	require.Equal(t, want, got)

	// Stopping in the second page.
	stop := errors.New("enough")
	n := 0
	err := s.List(ctx, "many/", func(oi storage.ObjectInfo) error {
		require.Equal(t, want[n], oi.Key)
		n++
		if n == len(want)-10 {
			return stop
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, len(want)-10, n)
}

func testDelete(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	for _, k := range []string{"d/x", "d/xy", "d/sub/deep/k"} {
		require.NoError(t, s.Put(ctx, k, []byte(k)))
	}
	require.NoError(t, s.Delete(ctx, "d/x"))
	ok, err := s.Exists(ctx, "d/x")
	require.NoError(t, err)
	require.False(t, ok)
	_, err = s.Get(ctx, "d/x")
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.ErrorIs(t, s.Delete(ctx, "d/x"), storage.ErrNotFound)
	got, err := s.Get(ctx, "d/xy")
	require.NoError(t, err)
	require.Equal(t, "d/xy", string(got))

	// Deleting the only object in a "directory" and writing there again.
	require.NoError(t, s.Delete(ctx, "d/sub/deep/k"))
	require.Equal(t, []string{"d/xy"}, listKeys(t, s, "d/"))
	require.NoError(t, s.Put(ctx, "d/sub/deep/k2", []byte("again")))
	require.Equal(t, []string{"d/sub/deep/k2", "d/xy"}, listKeys(t, s, "d/"))
	// A "directory" is not an object.
	require.ErrorIs(t, s.Delete(ctx, "d/sub"), storage.ErrNotFound)
}

func testExistsStat(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	ok, err := s.Exists(ctx, "e/k")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, s.Put(ctx, "e/k", []byte("12345")))
	ok, err = s.Exists(ctx, "e/k")
	require.NoError(t, err)
	require.True(t, ok)
	info, err := s.Stat(ctx, "e/k")
	require.NoError(t, err)
	require.Equal(t, int64(5), info.Size)
	require.Equal(t, "e/k", info.Key)
	// A prefix of existing keys is not an object.
	ok, err = s.Exists(ctx, "e")
	require.NoError(t, err)
	require.False(t, ok)
	_, err = s.Stat(ctx, "e")
	require.ErrorIs(t, err, storage.ErrNotFound)
}

func testNotFound(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	const k = "nf/missing"
	ops := map[string]func() error{
		"get":       func() error { _, err := s.Get(ctx, k); return err },
		"get_range": func() error { _, err := s.GetRange(ctx, k, 5, 10); return err },
		"reader":    func() error { _, err := s.NewReader(ctx, k); return err },
		"stat":      func() error { _, err := s.Stat(ctx, k); return err },
		"delete":    func() error { return s.Delete(ctx, k) },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			err := op()
			require.ErrorIs(t, err, storage.ErrNotFound)
			require.False(t, storage.IsTransient(err))
			require.NotErrorIs(t, err, storage.ErrPermission)
		})
	}
	// Listing a prefix with nothing under it is empty, not an error.
	require.Empty(t, listKeys(t, s, "nf/"))
}

func testCreateIfAbsent(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	require.NoError(t, s.CreateIfAbsent(ctx, "lock", []byte("first")))
	err := s.CreateIfAbsent(ctx, "lock", []byte("second"))
	require.ErrorIs(t, err, storage.ErrAlreadyExists)
	require.False(t, storage.IsTransient(err))
	got, err := s.Get(ctx, "lock")
	require.NoError(t, err)
	require.Equal(t, "first", string(got))

	require.NoError(t, s.Put(ctx, "put-first", []byte("p")))
	require.ErrorIs(t, s.CreateIfAbsent(ctx, "put-first", []byte("c")), storage.ErrAlreadyExists)

	require.NoError(t, s.Delete(ctx, "lock"))
	require.NoError(t, s.CreateIfAbsent(ctx, "lock", []byte("third")))
	got, err = s.Get(ctx, "lock")
	require.NoError(t, err)
	require.Equal(t, "third", string(got))
	require.NoError(t, s.CreateIfAbsent(ctx, "empty-lock", nil))
}

func testCreateRace(t *testing.T, s storage.Storage, o Options) {
	ctx := ctxT(t)
	for round := 0; round < 3; round++ {
		key := fmt.Sprintf("race/%d", round)
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]error, o.Racers)
		)
		for i := 0; i < o.Racers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = s.CreateIfAbsent(ctx, key, []byte(fmt.Sprintf("winner-%d", i)))
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range results {
			if err == nil {
				require.Equal(t, -1, winner, "round %d: racers %d and %d both won", round, winner, i)
				winner = i
				continue
			}
			require.ErrorIs(t, err, storage.ErrAlreadyExists, "round %d racer %d", round, i)
		}
		require.NotEqual(t, -1, winner, "round %d: nobody won", round)
		got, err := s.Get(ctx, key)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("winner-%d", winner), string(got))
	}
}

func testPutIfMatch(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	_, _, err := s.GetVersion(ctx, "cp")
	require.ErrorIs(t, err, storage.ErrNotFound)

	// NoVersion: create only if absent.
	require.NoError(t, s.PutIfMatch(ctx, "cp", []byte("100"), storage.NoVersion))
	err = s.PutIfMatch(ctx, "cp", []byte("x"), storage.NoVersion)
	require.ErrorIs(t, err, storage.ErrConflict)
	require.False(t, storage.IsTransient(err))
	got, v1, err := s.GetVersion(ctx, "cp")
	require.NoError(t, err)
	require.Equal(t, "100", string(got))
	require.NotEqual(t, storage.NoVersion, v1)

	// The version read: the write lands, and the version moves.
	require.NoError(t, s.PutIfMatch(ctx, "cp", []byte("200"), v1))
	got, v2, err := s.GetVersion(ctx, "cp")
	require.NoError(t, err)
	require.Equal(t, "200", string(got))
	require.NotEqual(t, v1, v2)

	// A stale version: refused, the object stays.
	require.ErrorIs(t, s.PutIfMatch(ctx, "cp", []byte("150"), v1), storage.ErrConflict)
	// A plain Put changes the version too.
	require.NoError(t, s.Put(ctx, "cp", []byte("300")))
	require.ErrorIs(t, s.PutIfMatch(ctx, "cp", []byte("250"), v2), storage.ErrConflict)
	got, err = s.Get(ctx, "cp")
	require.NoError(t, err)
	require.Equal(t, "300", string(got))

	// A version of a deleted object: refused, nothing is created.
	_, v3, err := s.GetVersion(ctx, "cp")
	require.NoError(t, err)
	require.NoError(t, s.Delete(ctx, "cp"))
	require.ErrorIs(t, s.PutIfMatch(ctx, "cp", []byte("400"), v3), storage.ErrConflict)
	ok, err := s.Exists(ctx, "cp")
	require.NoError(t, err)
	require.False(t, ok)
}

// testPutIfMatchRace: racers that read the same version and write with it:
// exactly one wins, whatever it wrote is what the object holds.
func testPutIfMatchRace(t *testing.T, s storage.Storage, o Options) {
	ctx := ctxT(t)
	key := "race/cp"
	require.NoError(t, s.Put(ctx, key, []byte("start")))
	for round := 0; round < 3; round++ {
		_, v, err := s.GetVersion(ctx, key)
		require.NoError(t, err)
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]error, o.Racers)
		)
		for i := 0; i < o.Racers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = s.PutIfMatch(ctx, key, []byte(fmt.Sprintf("round-%d-winner-%d", round, i)), v)
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range results {
			if err == nil {
				require.Equal(t, -1, winner, "round %d: racers %d and %d both won", round, winner, i)
				winner = i
				continue
			}
			// AWS S3 may answer 409 ConditionalRequestConflict (transient)
			// to a racer while another conditional write is in flight.
			if !errors.Is(err, storage.ErrTransient) {
				require.ErrorIs(t, err, storage.ErrConflict, "round %d racer %d", round, i)
			}
		}
		require.NotEqual(t, -1, winner, "round %d: nobody won", round)
		got, err := s.Get(ctx, key)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("round-%d-winner-%d", round, winner), string(got))
	}
}

func testLarge(t *testing.T, s storage.Storage, o Options) {
	ctx := ctxT(t)
	p := NewPattern(42, o.LargeSize)
	want := p.SHA256()
	require.NoError(t, s.PutReader(ctx, "big/object", p, p.Size()))
	info, err := s.Stat(ctx, "big/object")
	require.NoError(t, err)
	require.Equal(t, o.LargeSize, info.Size)

	rc, err := s.NewReader(ctx, "big/object")
	require.NoError(t, err)
	h := sha256.New()
	n, err := io.Copy(h, rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.Equal(t, o.LargeSize, n)
	require.Equal(t, want[:], h.Sum(nil), "sha256 of the streamed object")

	// A range across an 8 MiB part boundary.
	off := int64(8<<20) - 100
	if off+200 > o.LargeSize {
		off = o.LargeSize / 2
	}
	got := readAll(t)(s.GetRange(ctx, "big/object", off, 200))
	require.Equal(t, p.Bytes(off, 200), got)
}

// OddKeys are keys every backend must store and list verbatim.
var OddKeys = []string{
	"odd/with space/and more spaces.txt",
	"odd/unicode/日本語/ключ/ü",
	"odd/sym/!$&'()*+,;=@:~[]{}|^`<>",
	"odd/deep/a/b/c/d/e/f/g/h/i/j",
	"odd/dots/a.b..c...d",
	"odd/-dash_under.score",
	"odd/" + strings.Repeat(strings.Repeat("l", 250)+"/", 3) + "end",
}

func testOddKeys(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	for _, k := range OddKeys {
		require.NoError(t, storage.ValidateKey(k))
		require.NoError(t, s.Put(ctx, k, []byte(k)), k)
	}
	for _, k := range OddKeys {
		got, err := s.Get(ctx, k)
		require.NoError(t, err, k)
		require.Equal(t, k, string(got))
		ok, err := s.Exists(ctx, k)
		require.NoError(t, err)
		require.True(t, ok, k)
	}
	want := append([]string(nil), OddKeys...)
	sort.Strings(want)
	require.Equal(t, want, listKeys(t, s, "odd/"))
	for _, k := range OddKeys {
		require.NoError(t, s.Delete(ctx, k), k)
	}
	require.Empty(t, listKeys(t, s, "odd/"))
}

// InvalidKeys are rejected by every backend with ErrInvalidKey.
var InvalidKeys = []string{
	"", "/abs", "trailing/", "a//b", "a/./b", "a/../b", "..", ".",
	"ctl\x01", "nl\n", "back\\slash", "quote\"", "hash#", "pct%", "q?x",
	"__0x41__", ".pitr-tmp/x", strings.Repeat("s", storage.MaxSegmentLen+1), "bad\xffutf8", strings.Repeat("x", storage.MaxKeyLen+1),
}

func testInvalidKeys(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	for _, k := range InvalidKeys {
		require.ErrorIs(t, s.Put(ctx, k, []byte("x")), storage.ErrInvalidKey, "put %q", k)
		_, err := s.Get(ctx, k)
		require.ErrorIs(t, err, storage.ErrInvalidKey, "get %q", k)
		require.ErrorIs(t, s.CreateIfAbsent(ctx, k, []byte("x")), storage.ErrInvalidKey, "create %q", k)
		require.ErrorIs(t, s.Delete(ctx, k), storage.ErrInvalidKey, "delete %q", k)
	}
	require.ErrorIs(t, s.List(ctx, "a//", func(storage.ObjectInfo) error { return nil }), storage.ErrInvalidKey)
	require.Empty(t, listKeys(t, s, ""))
}

// failingReader yields n bytes of p, then fails.
type failingReader struct {
	r    io.Reader
	left int64
	err  error
}

func (f *failingReader) Read(b []byte) (int, error) {
	if f.left <= 0 {
		return 0, f.err
	}
	if int64(len(b)) > f.left {
		b = b[:f.left]
	}
	n, err := f.r.Read(b)
	f.left -= int64(n)
	return n, err
}

func testPutReaderAtomic(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	const size = 20 << 20 // several parts
	v1 := []byte("version 1")
	require.NoError(t, s.Put(ctx, "atomic/k", v1))
	boom := errors.New("reader exploded")
	cases := []struct {
		name string
		r    io.Reader
		size int64
	}{
		{"reader_error", &failingReader{r: NewPattern(1, size), left: 12 << 20, err: boom}, size},
		{"reader_error_first_part", &failingReader{r: NewPattern(1, size), left: 1 << 20, err: boom}, size},
		{"short", NewPattern(2, 2<<20), 3 << 20},
		{"long", NewPattern(3, 2<<20), 1 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Error(t, s.PutReader(ctx, "atomic/k", c.r, c.size))
			got, err := s.Get(ctx, "atomic/k")
			require.NoError(t, err)
			require.Equal(t, v1, got, "a failed put must leave the old object")
		})
	}
	require.Error(t, s.PutReader(ctx, "atomic/new", &failingReader{r: NewPattern(4, size), left: 10 << 20, err: boom}, size))
	ok, err := s.Exists(ctx, "atomic/new")
	require.NoError(t, err)
	require.False(t, ok, "a failed put must not create the object")
	require.Equal(t, []string{"atomic/k"}, listKeys(t, s, "atomic/"))
}

// cancelReader cancels a context once n bytes have been read.
type cancelReader struct {
	r      io.Reader
	left   int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.left -= int64(n)
	if c.left <= 0 {
		c.cancel()
	}
	return n, err
}

func testPutReaderCancel(t *testing.T, s storage.Storage, _ Options) {
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	const size = 20 << 20
	err := s.PutReader(ctx, "cancel/k", &cancelReader{r: NewPattern(5, size), left: 10 << 20, cancel: cancel}, size)
	require.Error(t, err)
	ok, err := s.Exists(ctxT(t), "cancel/k")
	require.NoError(t, err)
	require.False(t, ok, "a cancelled put must not create the object")
}

func testUnknownSize(t *testing.T, s storage.Storage, _ Options) {
	ctx := ctxT(t)
	p := NewPattern(9, 3<<20+17)
	require.NoError(t, s.PutReader(ctx, "unknown/size", io.LimitReader(p, p.Size()), -1))
	got, err := s.Get(ctx, "unknown/size")
	require.NoError(t, err)
	require.Equal(t, p.Bytes(0, p.Size()), got)
}
