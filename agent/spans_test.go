package agent

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func sp(start, end string, ts uint64) span {
	var e []byte
	if end != "" {
		e = []byte(end)
	}
	return span{start: []byte(start), end: e, ts: ts}
}

func TestSpanMap(t *testing.T) {
	var m spanMap
	require.Zero(t, m.min(nil, nil))

	m.apply([]span{sp("b", "d", 10), sp("d", "f", 20)})
	require.Equal(t, uint64(10), m.min([]byte("b"), []byte("f")))
	require.Equal(t, uint64(20), m.min([]byte("d"), []byte("e")))
	require.Equal(t, uint64(10), m.min([]byte("c"), []byte("d")))
	require.Zero(t, m.min([]byte("a"), []byte("c")), "a..b was never flushed")
	require.Zero(t, m.min([]byte("e"), nil), "f..inf was never flushed")

	// A split region flushes its half further; the max stays.
	m.apply([]span{sp("c", "d", 30)})
	require.Equal(t, uint64(30), m.min([]byte("c"), []byte("d")))
	require.Equal(t, uint64(10), m.min([]byte("b"), []byte("d")))
	m.apply([]span{sp("b", "f", 5)})
	require.Equal(t, uint64(10), m.min([]byte("b"), []byte("f")), "a lower ts never lowers the map")

	// Open ends.
	m.apply([]span{sp("", "b", 7), sp("f", "", 8)})
	require.Equal(t, uint64(7), m.min(nil, nil))
	require.Equal(t, uint64(8), m.min([]byte("zz"), nil))
	m.apply([]span{sp("", "", 40)})
	require.Equal(t, uint64(40), m.min(nil, nil))
	require.Len(t, m.spans, 1, "equal neighbours merge")
}
