package flush

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCutAt(t *testing.T) {
	const target = 128 << 20
	for _, tc := range []struct {
		name  string
		ratio float64
		want  int64
	}{
		{"no flush yet", 0, target},
		{"half the size stored", 0.5, 2 * target},
		{"incompressible", 1, target},
		{"bigger than logical (overhead)", 1.2, target},
		{"absurdly small ratio is bounded", 0.001, 20 * target},
	} {
		require.Equal(t, tc.want, cutAt(target, tc.ratio), tc.name)
	}
}
