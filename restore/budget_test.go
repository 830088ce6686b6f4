package restore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReadBudget (audit F8): the per-reader budget is what the memory
// budget leaves after Concurrency+readers chunk buffers of three times
// ChunkBytes, shared by the readers (Concurrency/4, at least one).
func TestReadBudget(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		name        string
		concurrency int
		memory      int64
		want        int64
		ok          bool
	}{
		{"default", 8, 1024 * MiB, 392 * MiB, true},
		{"64MiB at concurrency 8", 8, 64 * MiB, -88 * MiB, false},
		{"1GiB at concurrency 64", 64, 1024 * MiB, -56 * MiB, false},
		{"1GiB at concurrency 32: positive, below the floor", 32, 1024 * MiB, 8 * MiB, false},
		{"64MiB at concurrency 1: exactly the floor", 1, 64 * MiB, 16 * MiB, true},
		{"the smallest that fits concurrency 8", 8, 272 * MiB, 16 * MiB, true},
		{"one byte less", 8, 272*MiB - 1, 16*MiB - 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, ReadBudget(tc.concurrency, tc.memory, DefaultChunkBytes))
			err := CheckBudget(tc.concurrency, tc.memory)
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, "too small for concurrency")
			}
		})
	}
}
