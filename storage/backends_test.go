package storage_test

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
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
	t.Run("server_side_conditional_write", func(t *testing.T) {
		checkConditional(t, m.NewStorage(t))
	})
	t.Run("wrapped", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Storage { return wrapAll(t, m.NewStorage(t)) })
	})
	t.Run("wrong_secret_is_permission_and_redacted", func(t *testing.T) {
		const wrong = "Wr0ngSecretValue-xyz"
		m.CreateBucket(t, "pitr-test")
		u := strings.Replace(m.URL("pitr-test", "p"), url.QueryEscape(m.SecretKey), wrong, 1)
		checkBadCredentials(t, open(t, u), wrong)
	})
}

// TestS3EnvCredentials cannot be parallel (t.Setenv), so it has its own
// server.
func TestS3EnvCredentials(t *testing.T) {
	m := storagetest.StartMinIO(t)
	m.CreateBucket(t, "pitr-test")
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
	s := open(t, "s3://pitr-test/env?endpoint="+url.QueryEscape(m.Endpoint)+"&use_path_style=true")
	require.NoError(t, s.Put(context.Background(), "k", []byte("v")))
	require.NotContains(t, s.URL(), m.SecretKey)

	const wrong = "EnvWr0ngSecret-abc"
	t.Setenv("AWS_SECRET_ACCESS_KEY", wrong)
	checkBadCredentials(t, open(t, "s3://pitr-test/env?endpoint="+url.QueryEscape(m.Endpoint)+"&use_path_style=true"), wrong)
}

// TestAzureEnvCredentials: account and key from AZURE_STORAGE_ACCOUNT and
// AZURE_STORAGE_KEY, endpoint from the URL.
func TestAzureEnvCredentials(t *testing.T) {
	a := storagetest.StartAzurite(t)
	a.CreateContainer(t, "pitr-test")
	t.Setenv("AZURE_STORAGE_ACCOUNT", storagetest.AzuriteAccount)
	t.Setenv("AZURE_STORAGE_KEY", storagetest.AzuriteKey)
	u := "azblob://pitr-test/env?endpoint=" + url.QueryEscape(a.Endpoint)
	s := open(t, u)
	require.NoError(t, s.Put(context.Background(), "k", []byte("v")))
	got, err := s.Get(context.Background(), "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(got))

	const wrong = "RW52V3JvbmdLZXlFbnZXcm9uZ0tleUVudldyb25nS2V5"
	t.Setenv("AZURE_STORAGE_KEY", wrong)
	checkBadCredentials(t, open(t, u), wrong)
}

// TestGCSEmulatorHostEnv: STORAGE_EMULATOR_HOST instead of ?endpoint=.
func TestGCSEmulatorHostEnv(t *testing.T) {
	f := storagetest.StartFakeGCS(t)
	f.CreateBucket(t, "pitr-test")
	t.Setenv("STORAGE_EMULATOR_HOST", strings.TrimPrefix(f.Endpoint, "http://"))
	s := open(t, "gs://pitr-test/env")
	ctx := context.Background()
	require.NoError(t, s.Put(ctx, "a/k", []byte("v")))
	require.NoError(t, s.CreateIfAbsent(ctx, "lock", []byte("1")))
	require.ErrorIs(t, s.CreateIfAbsent(ctx, "lock", []byte("2")), storage.ErrAlreadyExists)
	got, err := s.Get(ctx, "a/k")
	require.NoError(t, err)
	require.Equal(t, "v", string(got))
	// The same objects through the endpoint parameter.
	require.Equal(t, []string{"a/k", "lock"}, listKeysOf(t, open(t, f.URL("pitr-test", "env")), ""))
}

func TestConformanceAzurite(t *testing.T) {
	t.Parallel()
	a := storagetest.StartAzurite(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage { return a.NewStorage(t) })
	t.Run("server_side_conditional_write", func(t *testing.T) {
		checkConditional(t, a.NewStorage(t))
	})
	t.Run("wrong_key_is_permission_and_redacted", func(t *testing.T) {
		a.CreateContainer(t, "pitr-test")
		// A well-formed (base64) but wrong key.
		const wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
		u := strings.Replace(a.URL("pitr-test", "p"), url.QueryEscape(storagetest.AzuriteKey), url.QueryEscape(wrong), 1)
		require.Contains(t, u, url.QueryEscape(wrong))
		checkBadCredentials(t, open(t, u), wrong)
	})
}

func TestConformanceFakeGCS(t *testing.T) {
	t.Parallel()
	f := storagetest.StartFakeGCS(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage { return f.NewStorage(t) })
	t.Run("server_side_conditional_write", func(t *testing.T) {
		checkConditional(t, f.NewStorage(t))
	})
}

// checkConditional proves that the server, not our Exists pre-check,
// rejects a conditional write over an existing object.
func checkConditional(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	require.NoError(t, storage.ConditionalWriteForTest(ctx, s, "cond", []byte("first")))
	err := storage.ConditionalWriteForTest(ctx, s, "cond", []byte("second"))
	require.ErrorIs(t, err, storage.ErrAlreadyExists)
	got, err := s.Get(ctx, "cond")
	require.NoError(t, err)
	require.Equal(t, "first", string(got))
}

// checkBadCredentials: every operation fails with ErrPermission, and no
// error or URL mentions the secret.
func checkBadCredentials(t *testing.T, s storage.Storage, secret string) {
	t.Helper()
	ctx := context.Background()
	require.NotContains(t, s.URL(), secret)
	errs := []error{s.Put(ctx, "k", []byte("v")), s.CreateIfAbsent(ctx, "k2", []byte("v")), s.Delete(ctx, "k")}
	_, err := s.Get(ctx, "k")
	errs = append(errs, err)
	_, err = s.Exists(ctx, "k")
	errs = append(errs, err)
	_, err = s.Stat(ctx, "k")
	errs = append(errs, err)
	errs = append(errs, s.List(ctx, "", func(storage.ObjectInfo) error { return nil }))
	for i, err := range errs {
		require.ErrorIs(t, err, storage.ErrPermission, "op %d: %v", i, err)
		require.False(t, storage.IsTransient(err))
		require.NotContains(t, err.Error(), secret, "op %d", i)
		require.NotContains(t, err.Error(), url.QueryEscape(secret), "op %d", i)
	}
}
