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
	w := newCPWriter("w", url, 7, hclog.NewNullLogger(), stop, time.Now)
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
	bad := newCPWriter("w", "bogus://x", 8, hclog.NewNullLogger(), stop2, time.Now)
	wg.Add(1)
	go func() { defer wg.Done(); bad.run() }()
	bad.set(1)
	require.Eventually(t, func() bool { return bad.err() != "" }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, bad.err(), "storage checkpoint")
	close(stop2)
	wg.Wait()
}
