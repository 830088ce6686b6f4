package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

// fakeSleep records the backoff delays instead of waiting.
type fakeSleep struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delays = append(f.delays, d)
	return ctx.Err()
}

func newRetry(t *testing.T) (*storage.Retry, *storagetest.Faulty, *fakeSleep) {
	t.Helper()
	f := storagetest.NewFaulty(open(t, "mem://"))
	fs := &fakeSleep{}
	r := storage.WithRetry(f, storage.RetryOptions{
		MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 250 * time.Millisecond,
		MaxBuffer: 1 << 20, Sleep: fs.sleep, Rand: func() float64 { return 0.5 },
	})
	return r, f, fs
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestRetryClassification(t *testing.T) {
	transient := map[string]error{
		"marked":         fmt.Errorf("503 Service Unavailable: %w", storage.ErrTransient),
		"conn_reset":     &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET},
		"conn_refused":   fmt.Errorf("dial: %w", syscall.ECONNREFUSED),
		"timeout":        timeoutErr{},
		"unexpected_eof": io.ErrUnexpectedEOF,
		"closed_conn":    &url.Error{Op: "Put", URL: "http://127.0.0.1:9/b/k", Err: io.EOF},
		"send_failed":    &smithyhttp.RequestSendError{Err: errors.New("write: broken pipe")},
	}
	permanent := map[string]error{
		"not_found":      fmt.Errorf("x: %w", storage.ErrNotFound),
		"already_exists": storage.ErrAlreadyExists,
		"permission":     fmt.Errorf("403: %w", storage.ErrPermission),
		"invalid_key":    storage.ErrInvalidKey,
		"canceled":       context.Canceled,
		"deadline":       context.DeadlineExceeded,
		"unclassified":   errors.New("something odd"),
		// A 4xx-ish error that also wraps a network error stays permanent.
		"not_found_over_net": fmt.Errorf("%w: %w", storage.ErrNotFound, syscall.ECONNRESET),
	}
	type op struct {
		name, fault string
		call        func(ctx context.Context, s storage.Storage) error
	}
	ops := []op{
		{"put", storagetest.OpPut, func(ctx context.Context, s storage.Storage) error { return s.Put(ctx, "k", []byte("v")) }},
		{"get", storagetest.OpGet, func(ctx context.Context, s storage.Storage) error { _, err := s.Get(ctx, "k"); return err }},
		{"read", storagetest.OpRead, func(ctx context.Context, s storage.Storage) error {
			rc, err := s.NewReader(ctx, "k")
			if err == nil {
				_ = rc.Close()
			}
			return err
		}},
		{"stat", storagetest.OpStat, func(ctx context.Context, s storage.Storage) error { _, err := s.Stat(ctx, "k"); return err }},
		{"exists", storagetest.OpExists, func(ctx context.Context, s storage.Storage) error { _, err := s.Exists(ctx, "k"); return err }},
		{"list", storagetest.OpList, func(ctx context.Context, s storage.Storage) error {
			return s.List(ctx, "", func(storage.ObjectInfo) error { return nil })
		}},
	}
	for _, o := range ops {
		for name, e := range transient {
			t.Run(o.name+"/transient_then_ok/"+name, func(t *testing.T) {
				r, f, fs := newRetry(t)
				require.NoError(t, r.Put(context.Background(), "k", []byte("v")))
				before := f.Calls(o.fault)
				f.Inject(storagetest.Fault{Op: o.fault, Times: 2, Err: e})
				fs.delays = nil
				require.NoError(t, o.call(context.Background(), r))
				require.Equal(t, 3, f.Calls(o.fault)-before)
				// Equal jitter with Rand=0.5: 3/4 of 100ms, then of 200ms.
				require.Equal(t, []time.Duration{75 * time.Millisecond, 150 * time.Millisecond}, fs.delays)
			})
			t.Run(o.name+"/transient_forever/"+name, func(t *testing.T) {
				r, f, _ := newRetry(t)
				require.NoError(t, r.Put(context.Background(), "k", []byte("v")))
				before := f.Calls(o.fault)
				f.Inject(storagetest.Fault{Op: o.fault, Times: -1, Err: e})
				err := o.call(context.Background(), r)
				require.ErrorIs(t, err, e)
				require.Contains(t, err.Error(), "gave up after 4 attempts")
				require.Equal(t, 4, f.Calls(o.fault)-before)
			})
		}
		for name, e := range permanent {
			t.Run(o.name+"/permanent/"+name, func(t *testing.T) {
				r, f, fs := newRetry(t)
				require.NoError(t, r.Put(context.Background(), "k", []byte("v")))
				before := f.Calls(o.fault)
				f.Inject(storagetest.Fault{Op: o.fault, Times: -1, Err: e})
				fs.delays = nil
				err := o.call(context.Background(), r)
				require.ErrorIs(t, err, e)
				require.Equal(t, 1, f.Calls(o.fault)-before, "a permanent error is not retried")
				require.Empty(t, fs.delays)
			})
		}
	}
}

func TestRetryBackoffGrowsAndCaps(t *testing.T) {
	f := storagetest.NewFaulty(open(t, "mem://"))
	fs := &fakeSleep{}
	r := storage.WithRetry(f, storage.RetryOptions{
		MaxAttempts: 6, BaseDelay: 100 * time.Millisecond, MaxDelay: 1 * time.Second,
		Sleep: fs.sleep, Rand: func() float64 { return 0.999999 },
	})
	f.Inject(storagetest.Fault{Op: storagetest.OpStat, Times: -1, Err: storage.ErrTransient})
	_, err := r.Stat(context.Background(), "k")
	require.ErrorIs(t, err, storage.ErrTransient)
	require.Len(t, fs.delays, 5)
	for i, want := range []time.Duration{100, 200, 400, 800, 1000} {
		want *= time.Millisecond
		require.InDelta(t, float64(want), float64(fs.delays[i]), float64(time.Millisecond), "delay %d", i)
	}
}

func TestRetryStopsWhenContextEnds(t *testing.T) {
	f := storagetest.NewFaulty(open(t, "mem://"))
	ctx, cancel := context.WithCancel(context.Background())
	r := storage.WithRetry(f, storage.RetryOptions{
		MaxAttempts: 100,
		Sleep: func(ctx context.Context, d time.Duration) error {
			cancel() // the caller gives up while we back off
			return ctx.Err()
		},
	})
	f.Inject(storagetest.Fault{Op: storagetest.OpGet, Times: -1, Err: storage.ErrTransient})
	_, err := r.Get(ctx, "k")
	require.ErrorIs(t, err, storage.ErrTransient)
	require.Equal(t, 1, f.Calls(storagetest.OpGet))
}

// oneShotReader is a non-seekable stream.
type oneShotReader struct{ r io.Reader }

func (o *oneShotReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestRetryPutReader(t *testing.T) {
	data := storagetest.NewPattern(3, 3<<20).Bytes(0, 3<<20)
	small := data[:512<<10]
	cases := []struct {
		name      string
		r         func() io.Reader
		size      int64
		want      []byte
		wantCalls int
		wantErr   bool
	}{
		// Seekable: rewound after the failed attempt consumed 1 MiB.
		{name: "seekable", r: func() io.Reader { return bytes.NewReader(data) }, size: int64(len(data)), want: data, wantCalls: 2},
		// Non-seekable but within MaxBuffer (1 MiB): buffered, retried.
		{name: "buffered", r: func() io.Reader { return &oneShotReader{bytes.NewReader(small)} }, size: int64(len(small)), want: small, wantCalls: 2},
		// Non-seekable and larger than MaxBuffer: exactly one attempt.
		{name: "unbufferable", r: func() io.Reader { return &oneShotReader{bytes.NewReader(data)} }, size: int64(len(data)), wantCalls: 1, wantErr: true},
		// Unknown size cannot be buffered either.
		{name: "unknown_size", r: func() io.Reader { return &oneShotReader{bytes.NewReader(small)} }, size: -1, wantCalls: 1, wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, f, _ := newRetry(t)
			f.Inject(storagetest.Fault{Op: storagetest.OpPut, Times: 1, Err: storage.ErrTransient, After: 256 << 10})
			err := r.PutReader(context.Background(), "obj", c.r(), c.size)
			require.Equal(t, c.wantCalls, f.Calls(storagetest.OpPut))
			if c.wantErr {
				require.ErrorIs(t, err, storage.ErrTransient)
				ok, err := r.Exists(context.Background(), "obj")
				require.NoError(t, err)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			got, err := r.Get(context.Background(), "obj")
			require.NoError(t, err)
			require.True(t, bytes.Equal(c.want, got), "content after a retried upload")
		})
	}
}

func TestRetryResumesReads(t *testing.T) {
	r, f, _ := newRetry(t)
	data := storagetest.NewPattern(4, 100_000).Bytes(0, 100_000)
	require.NoError(t, r.Put(context.Background(), "obj", data))
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	// Two bodies break mid-stream; the third open reads to the end.
	f.Inject(storagetest.Fault{Op: storagetest.OpReadBody, Times: 1, Err: reset, After: 30_000})
	f.Inject(storagetest.Fault{Op: storagetest.OpReadBody, Times: 1, Err: io.ErrUnexpectedEOF, After: 10_000})
	rc, err := r.NewReader(context.Background(), "obj")
	require.NoError(t, err)
	got, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.True(t, bytes.Equal(data, got))
	require.Equal(t, 3, f.Calls(storagetest.OpRead))

	// A ranged read resumes within its range.
	f.Inject(storagetest.Fault{Op: storagetest.OpReadBody, Times: 1, Err: reset, After: 1000})
	rc, err = r.GetRange(context.Background(), "obj", 5000, 20_000)
	require.NoError(t, err)
	got, err = io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.True(t, bytes.Equal(data[5000:25000], got))

	// A permanent error mid-stream is not resumed.
	f.Inject(storagetest.Fault{Op: storagetest.OpReadBody, Times: 1, Err: storage.ErrPermission, After: 10})
	rc, err = r.NewReader(context.Background(), "obj")
	require.NoError(t, err)
	_, err = io.ReadAll(rc)
	require.ErrorIs(t, err, storage.ErrPermission)
	require.NoError(t, rc.Close())
}

func TestRetryListResumesWithoutDuplicates(t *testing.T) {
	r, f, _ := newRetry(t)
	var want []string
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("l/%02d", i)
		want = append(want, k)
		require.NoError(t, r.Put(context.Background(), k, nil))
	}
	f.Inject(storagetest.Fault{Op: storagetest.OpList, Times: 1, Err: storage.ErrTransient, After: 4})
	f.Inject(storagetest.Fault{Op: storagetest.OpList, Times: 1, Err: storage.ErrTransient, After: 7})
	var got []string
	require.NoError(t, r.List(context.Background(), "l/", func(oi storage.ObjectInfo) error {
		got = append(got, oi.Key)
		return nil
	}))
	require.Equal(t, want, got)
	require.Equal(t, 3, f.Calls(storagetest.OpList))

	// The callback's own error is returned as is, even if it looks transient.
	cbErr := fmt.Errorf("callback: %w", storage.ErrTransient)
	n := 0
	err := r.List(context.Background(), "l/", func(storage.ObjectInfo) error { n++; return cbErr })
	require.Equal(t, cbErr, err)
	require.Equal(t, 1, n)
}

func TestRetryAmbiguousWrites(t *testing.T) {
	ctx := context.Background()
	t.Run("delete_lost_response", func(t *testing.T) {
		r, f, _ := newRetry(t)
		require.NoError(t, r.Put(ctx, "k", []byte("v")))
		f.Inject(storagetest.Fault{Op: storagetest.OpDelete, Times: 1, Err: storage.ErrTransient, Commit: true})
		require.NoError(t, r.Delete(ctx, "k"))
		require.Equal(t, 2, f.Calls(storagetest.OpDelete))
		// A plain missing object is still NotFound.
		require.ErrorIs(t, r.Delete(ctx, "k"), storage.ErrNotFound)
	})
	t.Run("create_lost_response", func(t *testing.T) {
		r, f, _ := newRetry(t)
		f.Inject(storagetest.Fault{Op: storagetest.OpCreate, Times: 1, Err: storage.ErrTransient, Commit: true})
		require.NoError(t, r.CreateIfAbsent(ctx, "lock", []byte("mine")))
		require.Equal(t, 2, f.Calls(storagetest.OpCreate))
	})
	t.Run("create_lost_to_other_writer", func(t *testing.T) {
		r, f, _ := newRetry(t)
		require.NoError(t, r.Put(ctx, "lock", []byte("theirs")))
		f.Inject(storagetest.Fault{Op: storagetest.OpCreate, Times: 1, Err: storage.ErrTransient})
		require.ErrorIs(t, r.CreateIfAbsent(ctx, "lock", []byte("mine")), storage.ErrAlreadyExists)
	})
}

func TestRetryLogsWithoutSecrets(t *testing.T) {
	var buf bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Debug})
	const secret = "s3cr3t-Value-42"
	s, err := storage.Open(context.Background(),
		"s3://bucket/p?endpoint=http://127.0.0.1:1&access_key=AKID&secret_key="+secret+"&region=us-east-1&use_path_style=true",
		storage.Logger(logger))
	require.NoError(t, err)
	defer s.Close()
	r := storage.WithRetry(s, storage.RetryOptions{
		MaxAttempts: 3, Logger: logger,
		Sleep: func(ctx context.Context, d time.Duration) error { return nil },
	})
	err = r.Put(context.Background(), "k", []byte("v"))
	require.Error(t, err)
	require.True(t, storage.IsTransient(err), "connection refused is transient: %v", err)
	require.Contains(t, buf.String(), "retrying")
	require.NotContains(t, buf.String(), secret)
	require.NotContains(t, err.Error(), secret)
	require.False(t, strings.Contains(r.URL(), secret))
}
