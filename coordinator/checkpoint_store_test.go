package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

// TestCheckpointWriter: checkpoint/global only goes up, starting from what
// storage holds; nothing is written after the term stops; errors surface.
func TestCheckpointWriter(t *testing.T) {
	ctx := context.Background()
	url := "file://" + t.TempDir()
	s, err := storage.Open(ctx, url)
	require.NoError(t, err)
	defer s.Close()
	read := func() uint64 {
		b, err := s.Get(ctx, logfile.CheckpointPath)
		require.NoError(t, err)
		gc, err := logfile.DecodeCheckpoint(b)
		require.NoError(t, err)
		return gc.GetTs()
	}
	b, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: "w", Ts: 100})
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, logfile.CheckpointPath, b))

	stop := make(chan struct{})
	w := newCPWriter("w", url, 7, hclog.NewNullLogger(), stop, time.Now, nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.run() }()

	w.set(50)
	require.Eventually(t, func() bool { v, ok := w.stored(); return ok && v == 100 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, uint64(100), read(), "never lowered")
	w.set(150)
	require.Eventually(t, func() bool { return read() == 150 }, 5*time.Second, 10*time.Millisecond)
	b, err = s.Get(ctx, logfile.CheckpointPath)
	require.NoError(t, err)
	gc, err := logfile.DecodeCheckpoint(b)
	require.NoError(t, err)
	require.Equal(t, int64(7), gc.GetTerm())
	require.Empty(t, w.err())

	close(stop)
	wg.Wait()
	w.set(200)
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, uint64(150), read(), "nothing after the term stops")

	stop2 := make(chan struct{})
	bad := newCPWriter("w", "bogus://x", 8, hclog.NewNullLogger(), stop2, time.Now, nil)
	wg.Add(1)
	go func() { defer wg.Done(); bad.run() }()
	bad.set(1)
	require.Eventually(t, func() bool { return bad.err() != "" }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, bad.err(), "storage checkpoint")
	close(stop2)
	wg.Wait()
}

// gatedStorage holds every checkpoint write until release is closed, and
// says on entered when one is waiting: a slow PUT of a deposed term.
type gatedStorage struct {
	storage.Storage
	entered chan struct{}
	release chan struct{}
}

func (g *gatedStorage) gate() {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.release
}

func (g *gatedStorage) Put(ctx context.Context, key string, data []byte) error {
	g.gate()
	return g.Storage.Put(ctx, key, data)
}

func (g *gatedStorage) PutIfMatch(ctx context.Context, key string, data []byte, v storage.Version) error {
	g.gate()
	return g.Storage.PutIfMatch(ctx, key, data, v)
}

func (g *gatedStorage) Close() error { return nil }

// TestCheckpointWriterDeposedTerm (audit F7, I2 in storage): term 1's
// write of 150 is slow; term 2 writes 200 meanwhile; term 1's write then
// lands. checkpoint/global must stay at 200.
func TestCheckpointWriterDeposedTerm(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		s, err := storage.Open(context.Background(), "file://"+t.TempDir())
		require.NoError(t, err)
		defer s.Close()
		checkDeposedTerm(t, s)
	})
	t.Run("minio", func(t *testing.T) {
		// If-Match as MinIO (and AWS S3) enforce it, through the header
		// middleware of the pinned SDK.
		checkDeposedTerm(t, storagetest.StartMinIO(t).NewStorage(t))
	})
}

func checkDeposedTerm(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	read := func() *pitrpb.GlobalCheckpoint {
		b, err := s.Get(ctx, logfile.CheckpointPath)
		require.NoError(t, err)
		gc, err := logfile.DecodeCheckpoint(b)
		require.NoError(t, err)
		return gc
	}
	b, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: "w", Ts: 100})
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, logfile.CheckpointPath, b))

	g := &gatedStorage{Storage: s, entered: make(chan struct{}, 1), release: make(chan struct{})}
	stop1, stop2 := make(chan struct{}), make(chan struct{})
	w1 := newCPWriter("w", "test://", 1, hclog.NewNullLogger(), stop1, time.Now, nil)
	w1.open = func(context.Context, string) (storage.Storage, error) { return g, nil }
	w2 := newCPWriter("w", "test://", 2, hclog.NewNullLogger(), stop2, time.Now, nil)
	w2.open = func(context.Context, string) (storage.Storage, error) {
		return &gatedStorage{Storage: s, release: closed()}, nil
	}
	var wg sync.WaitGroup
	defer func() { close(stop1); close(stop2); wg.Wait() }()
	for _, w := range []*cpWriter{w1, w2} {
		wg.Add(1)
		go func() { defer wg.Done(); w.run() }()
	}

	w1.set(150)
	select {
	case <-g.entered: // term 1's write is on its way
	case <-time.After(10 * time.Second):
		t.Fatal("term 1 never wrote")
	}
	w2.set(200)
	require.Eventually(t, func() bool { return read().GetTs() == 200 }, 10*time.Second, 10*time.Millisecond)
	close(g.release)
	// Term 1's write has landed or was refused once its writer settles.
	require.Eventually(t, func() bool {
		v, ok := w1.stored()
		return ok && v >= 150 && w1.idle()
	}, 10*time.Second, 10*time.Millisecond)
	gc := read()
	require.Equal(t, uint64(200), gc.GetTs(), "checkpoint/global after term 2 wrote 200: %d (term %d)", gc.GetTs(), gc.GetTerm())
	require.Equal(t, int64(2), gc.GetTerm())
}

func closed() chan struct{} { c := make(chan struct{}); close(c); return c }
