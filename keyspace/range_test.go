package keyspace

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func r(s, e string) Range { return Range{Start: []byte(s), End: []byte(e)} }

// keysOf renders ranges so that nil and empty keys compare equal.
func keysOf(rs []Range) []string {
	out := []string{}
	for _, x := range rs {
		out = append(out, string(x.Start)+".."+string(x.End))
	}
	return out
}

func TestComparePoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b Point
		want int
	}{
		{"keys", StartPoint([]byte("a")), StartPoint([]byte("b")), -1},
		{"equal keys", EndPoint([]byte("a")), StartPoint([]byte("a")), 0},
		{"empty start is the first key", StartPoint(nil), StartPoint([]byte{0}), -1},
		{"empty end is +inf", EndPoint(nil), EndPoint([]byte{0xff, 0xff}), 1},
		{"key before +inf", StartPoint([]byte{0xff}), EndPoint(nil), -1},
		{"+inf equals +inf", EndPoint(nil), EndPoint([]byte{}), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, ComparePoints(tc.a, tc.b))
			require.Equal(t, -tc.want, ComparePoints(tc.b, tc.a))
		})
	}
	require.Equal(t, 1, CompareEnds(nil, []byte("z")))
	require.Equal(t, -1, CompareEnds([]byte("a"), []byte("b")))
	require.True(t, BeforeEnd([]byte("zzz"), nil))
	require.False(t, BeforeEnd([]byte("b"), []byte("b")))
}

func TestContains(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Range
		key  string
		want bool
	}{
		{"start is in", r("b", "d"), "b", true},
		{"end is out", r("b", "d"), "d", false},
		{"before", r("b", "d"), "a", false},
		{"open end", r("b", ""), "\xff\xff", true},
		{"whole space holds the empty key", Range{}, "", true},
		{"empty range", r("b", "b"), "b", false},
		{"inverted range", r("d", "b"), "c", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, tc.r.Contains([]byte(tc.key)))
		})
	}
}

func TestIntersect(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b Range
		want Range
		ok   bool
	}{
		{"overlap", r("a", "c"), r("b", "d"), r("b", "c"), true},
		{"inside", r("a", "z"), r("c", "d"), r("c", "d"), true},
		{"open ends", r("a", ""), r("b", ""), r("b", ""), true},
		{"one open end", r("a", ""), r("b", "c"), r("b", "c"), true},
		{"adjacent share no key", r("a", "b"), r("b", "c"), r("b", "b"), false},
		{"disjoint", r("a", "b"), r("x", ""), r("x", "b"), false},
		{"whole space", Range{}, r("k", "m"), r("k", "m"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.a.Intersect(tc.b)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.ok, tc.a.Overlaps(tc.b))
			require.Equal(t, tc.ok, tc.b.Overlaps(tc.a))
			require.Equal(t, keysOf([]Range{tc.want}), keysOf([]Range{got}))
		})
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Range
		want []Range
	}{
		{"none is the whole key space", nil, []Range{{}}},
		{"sorted", []Range{r("x", "y"), r("a", "b")}, []Range{r("a", "b"), r("x", "y")}},
		{"overlapping merge", []Range{r("a", "c"), r("b", "d")}, []Range{r("a", "d")}},
		{"adjacent merge", []Range{r("a", "b"), r("b", "c")}, []Range{r("a", "c")}},
		{"contained", []Range{r("a", "z"), r("c", "d")}, []Range{r("a", "z")}},
		{"open end swallows the rest", []Range{r("a", ""), r("b", "c"), r("x", "")}, []Range{r("a", "")}},
		{"empty and inverted dropped", []Range{r("b", "b"), r("d", "c"), r("e", "f")}, []Range{r("e", "f")}},
		{"mixed", []Range{r("x", ""), r("c", "d"), r("a", "b"), r("b", "c"), r("q", "q"), r("y", "z")}, []Range{r("a", "d"), r("x", "")}},
		{"all empty is none, not everything", []Range{r("b", "b")}, []Range{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]Range(nil), tc.in...)
			require.Equal(t, keysOf(tc.want), keysOf(Normalize(tc.in)))
			require.Equal(t, in, tc.in, "input not modified")
		})
	}
	require.Empty(t, Merge(nil), "Merge of none is none")
}

func TestClip(t *testing.T) {
	task := Normalize([]Range{r("b", "d"), r("f", "h"), r("x", "")})
	for _, tc := range []struct {
		name string
		in   Range
		want []Range
	}{
		{"whole space", Range{}, task},
		{"spans two", r("c", "g"), []Range{r("c", "d"), r("f", "g")}},
		{"in a gap", r("d", "f"), []Range{}},
		{"open end", r("g", ""), []Range{r("g", "h"), r("x", "")}},
		{"ends in a gap", r("c", "e"), []Range{r("c", "d")}},
		{"starts before the task", r("a", "c"), []Range{r("b", "c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, keysOf(tc.want), keysOf(Clip(tc.in, task)))
		})
	}
	// From the coordinator's lock-resolution tests (clipRange before).
	for _, tc := range []struct {
		name string
		in   Range
		task []Range
		want []Range
	}{
		{"whole space task", r("b", "d"), []Range{{}}, []Range{r("b", "d")}},
		{"open range, two task ranges", r("b", ""), []Range{r("a", "c"), r("e", "")}, []Range{r("b", "c"), r("e", "")}},
		{"outside", r("x", "z"), []Range{r("a", "c")}, nil},
		{"whole space in", Range{}, []Range{r("a", "c")}, []Range{r("a", "c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, keysOf(tc.want), keysOf(Clip(tc.in, Normalize(tc.task))))
		})
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct {
		r    Range
		want string
	}{
		{Range{}, "[-inf, +inf)"},
		{r("a", "b"), `["a", "b")`},
		{Range{Start: []byte{0, 0xff}, End: []byte("k")}, `[0x00ff, "k")`},
		{r("k\"", ""), `["k\"", +inf)`},
	} {
		require.Equal(t, tc.want, tc.r.String())
	}
	require.Equal(t, `""`, FormatKey(nil))
}

func TestRangeJSON(t *testing.T) {
	in := Range{Start: []byte{0x74, 0x00}, End: nil}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	require.JSONEq(t, `{"start_key":"7400","end_key":""}`, string(b))
	var out Range
	require.NoError(t, json.Unmarshal(b, &out))
	require.Equal(t, keysOf([]Range{in}), keysOf([]Range{out}))
	require.Error(t, json.Unmarshal([]byte(`{"start_key":"zz"}`), &out))
}
