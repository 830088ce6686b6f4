package storage_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

func open(t *testing.T, rawURL string) storage.Storage {
	t.Helper()
	s, err := storage.Open(context.Background(), rawURL)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestConformanceMem(t *testing.T) {
	t.Parallel()
	storagetest.Run(t, func(t *testing.T) storage.Storage { return open(t, "mem://test/some/prefix") })
}

func TestConformanceFile(t *testing.T) {
	t.Parallel()
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return open(t, "file://"+filepath.Join(t.TempDir(), "root"))
	})
}

func TestConformanceMinIO(t *testing.T) {
	t.Parallel()
	m := storagetest.StartMinIO(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage { return m.NewStorage(t) })
}

func TestConformanceAzurite(t *testing.T) {
	t.Parallel()
	a := storagetest.StartAzurite(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage { return a.NewStorage(t) })
}

func TestConformanceFakeGCS(t *testing.T) {
	t.Parallel()
	f := storagetest.StartFakeGCS(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage { return f.NewStorage(t) })
}
