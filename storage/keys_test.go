package storage_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

func TestValidateKey(t *testing.T) {
	valid := append([]string{
		"pitr.lock", "task.pb", "checkpoint/global",
		"log/20240131/23/7/00000000000003e8-0f8fe5d1-6e8c-4c4e-9d5e-5b0e0e2a7a9b.parquet",
		"meta/00000000000003e8-0000000000000007.meta", "a", "..a/b..", ".hidden/x",
		strings.Repeat("k", storage.MaxSegmentLen),
	}, storagetest.OddKeys...)
	for _, k := range valid {
		require.NoError(t, storage.ValidateKey(k), "%q", k)
	}
	for _, k := range storagetest.InvalidKeys {
		require.ErrorIs(t, storage.ValidateKey(k), storage.ErrInvalidKey, "%q", k)
	}
}
