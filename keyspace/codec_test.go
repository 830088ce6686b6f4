package keyspace

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/util/codec"
)

func TestEncodeBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  []byte
		enc  []byte
	}{
		{"empty key", []byte{}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0xf7}},
		{"short", []byte("abc"), []byte{'a', 'b', 'c', 0, 0, 0, 0, 0, 0xfa}},
		{"one group", []byte("12345678"), []byte{'1', '2', '3', '4', '5', '6', '7', '8', 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xf7}},
		{"nine", []byte("123456789"), []byte{'1', '2', '3', '4', '5', '6', '7', '8', 0xff, '9', 0, 0, 0, 0, 0, 0, 0, 0xf8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.enc, EncodeBytes(tc.raw))
			require.Equal(t, codec.EncodeBytes(nil, tc.raw), EncodeBytes(tc.raw), "same as TiKV's codec")
			got, err := DecodeBytes(tc.enc)
			require.NoError(t, err)
			require.Equal(t, tc.raw, got)
		})
	}
}

func TestDecodeBytesRejects(t *testing.T) {
	good := EncodeBytes([]byte("abc"))
	for _, tc := range []struct {
		name string
		enc  []byte
	}{
		{"empty", []byte{}},
		{"short group", good[:8]},
		{"trailing bytes", append(append([]byte{}, good...), 'x')},
		{"two keys", append(append([]byte{}, good...), good...)},
		{"bad marker", []byte{'a', 0, 0, 0, 0, 0, 0, 0, 0xf0}},
		{"non-zero padding", []byte{'a', 'b', 'c', 0, 0, 1, 0, 0, 0xfa}},
		{"only full groups", []byte{'1', '2', '3', '4', '5', '6', '7', '8', 0xff}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeBytes(tc.enc)
			require.ErrorIs(t, err, ErrBadEncoding)
		})
	}
}

func TestKeyBoundaries(t *testing.T) {
	require.Nil(t, EncodeKey(nil), "±inf stays empty")
	k, err := DecodeKey(nil)
	require.NoError(t, err)
	require.Empty(t, k)
	enc := Range{Start: []byte("a")}.Encode()
	require.Equal(t, EncodeBytes([]byte("a")), enc.Start)
	require.Empty(t, enc.End)
	dec, err := DecodeRange(enc)
	require.NoError(t, err)
	require.Equal(t, []byte("a"), dec.Start)
	require.Empty(t, dec.End)
	_, err = DecodeRange(Range{Start: enc.Start, End: append(EncodeBytes([]byte("b")), 0)})
	require.ErrorIs(t, err, ErrBadEncoding)
}

// FuzzDecodeBytes: DecodeBytes never panics; what it accepts re-encodes to
// the same bytes (so it accepts exactly one encoding per key) and it
// agrees with TiKV's codec there; anything after a valid key is rejected;
// every raw key round-trips and sorts like its encoding.
func FuzzDecodeBytes(f *testing.F) {
	for _, s := range [][]byte{nil, []byte("abc"), []byte("12345678"), EncodeBytes([]byte("abc")), EncodeBytes(make([]byte, 16))} {
		f.Add(s, []byte("b"))
	}
	f.Fuzz(func(t *testing.T, in, other []byte) {
		if raw, err := DecodeBytes(in); err == nil {
			if !bytes.Equal(EncodeBytes(raw), in) {
				t.Fatalf("decode(%x) = %x re-encodes to %x", in, raw, EncodeBytes(raw))
			}
			rest, want, cerr := codec.DecodeBytes(in, nil)
			if cerr != nil || len(rest) != 0 || !bytes.Equal(want, raw) {
				t.Fatalf("decode(%x) = %x; TiKV's codec: %x rest %x err %v", in, raw, want, rest, cerr)
			}
			if len(other) > 0 {
				if _, err := DecodeBytes(append(append([]byte{}, in...), other...)); err == nil {
					t.Fatalf("decode(%x ++ %x) accepted trailing bytes", in, other)
				}
			}
		}
		enc := EncodeBytes(in)
		raw, err := DecodeBytes(enc)
		if err != nil || !bytes.Equal(raw, in) {
			t.Fatalf("round trip of %x: %x, %v", in, raw, err)
		}
		if _, err := DecodeBytes(append(enc, other...)); len(other) > 0 && err == nil {
			t.Fatalf("decode(encode(%x) ++ %x) accepted trailing bytes", in, other)
		}
		if got, want := bytes.Compare(enc, EncodeBytes(other)), bytes.Compare(in, other); got != want {
			t.Fatalf("order of %x, %x: encoded %d, raw %d", in, other, got, want)
		}
	})
}

// FuzzDecodeRange: DecodeRange never panics, round-trips Encode, and
// rejects a boundary with trailing bytes.
func FuzzDecodeRange(f *testing.F) {
	f.Add([]byte("a"), []byte("b"), []byte{})
	f.Add([]byte{}, []byte{}, []byte{0})
	f.Fuzz(func(t *testing.T, start, end, junk []byte) {
		_, _ = DecodeRange(Range{Start: start, End: end})
		in := Range{Start: start, End: end}
		dec, err := DecodeRange(in.Encode())
		if err != nil || !bytes.Equal(dec.Start, start) || !bytes.Equal(dec.End, end) {
			t.Fatalf("round trip of %v: %v, %v", in, dec, err)
		}
		if len(end) > 0 && len(junk) > 0 {
			if _, err := DecodeRange(Range{Start: EncodeKey(start), End: append(EncodeKey(end), junk...)}); err == nil {
				t.Fatalf("end %x ++ %x accepted", end, junk)
			}
		}
	})
}
