package keyspace

import (
	"errors"
	"fmt"
)

// The memcomparable encoding of TiKV's codec (encode_bytes, and client-go
// util/codec.EncodeBytes): the raw key in groups of 8 bytes, each followed
// by a marker byte. A full group's marker is 0xff; the last group is padded
// with zeros to 8 bytes and its marker is 0xff minus the pad length, so a
// key whose length is a multiple of 8 ends with a group of 8 zero bytes and
// marker 0xf7. The encoding sorts like the raw keys and no encoding is a
// prefix of another.
//
//	raw "abc"      → 61 62 63 00 00 00 00 00 | fa
//	raw 8 × 0x01   → 01 01 01 01 01 01 01 01 | ff 00 00 00 00 00 00 00 00 | f7
const (
	encGroupSize = 8
	encMarker    = 0xff
	encPad       = 0x00
)

// ErrBadEncoding is returned (wrapped) for input that is not exactly one
// memcomparable-encoded key.
var ErrBadEncoding = errors.New("not a memcomparable key")

// EncodeBytes returns the memcomparable encoding of raw (the empty key
// included: one padded group).
func EncodeBytes(raw []byte) []byte {
	out := make([]byte, 0, (len(raw)/encGroupSize+1)*(encGroupSize+1))
	for i := 0; i <= len(raw); i += encGroupSize {
		n := min(len(raw)-i, encGroupSize)
		out = append(out, raw[i:i+n]...)
		pad := encGroupSize - n
		for range pad {
			out = append(out, encPad)
		}
		out = append(out, byte(encMarker-pad))
	}
	return out
}

// DecodeBytes decodes exactly one memcomparable-encoded key. It rejects a
// short group, a bad marker, non-zero padding and bytes after the key: a
// region boundary that is not one complete encoding has no exact raw key,
// and guessing one (by dropping the rest, as one of our copies did) would
// claim or skip keys that the region does not hold.
func DecodeBytes(enc []byte) ([]byte, error) {
	var raw []byte
	for off := 0; ; off += encGroupSize + 1 {
		if len(enc)-off < encGroupSize+1 {
			return nil, fmt.Errorf("%w: %x: truncated group at byte %d", ErrBadEncoding, enc, off)
		}
		group := enc[off : off+encGroupSize]
		pad := encMarker - int(enc[off+encGroupSize])
		if pad == 0 {
			raw = append(raw, group...)
			continue
		}
		if pad > encGroupSize {
			return nil, fmt.Errorf("%w: %x: bad marker %#x at byte %d", ErrBadEncoding, enc, enc[off+encGroupSize], off+encGroupSize)
		}
		for _, b := range group[encGroupSize-pad:] {
			if b != encPad {
				return nil, fmt.Errorf("%w: %x: non-zero padding in group at byte %d", ErrBadEncoding, enc, off)
			}
		}
		if end := off + encGroupSize + 1; end != len(enc) {
			return nil, fmt.Errorf("%w: %x: %d trailing bytes", ErrBadEncoding, enc, len(enc)-end)
		}
		if raw == nil {
			raw = []byte{}
		}
		return append(raw, group[:encGroupSize-pad]...), nil
	}
}

// EncodeKey encodes a range boundary: like EncodeBytes, except that an
// empty boundary (-inf as a start, +inf as an end) stays empty, as PD and
// TiKV expect.
func EncodeKey(raw []byte) []byte {
	if len(raw) == 0 {
		return nil
	}
	return EncodeBytes(raw)
}

// DecodeKey decodes a range boundary EncodeKey (or PD) produced; empty
// stays empty.
func DecodeKey(enc []byte) ([]byte, error) {
	if len(enc) == 0 {
		return nil, nil
	}
	return DecodeBytes(enc)
}

// Encode returns the range with both boundaries encoded (EncodeKey).
func (r Range) Encode() Range { return Range{Start: EncodeKey(r.Start), End: EncodeKey(r.End)} }

// DecodeRange decodes a range of encoded boundaries, such as a PD region's
// start and end keys.
func DecodeRange(enc Range) (Range, error) {
	s, err := DecodeKey(enc.Start)
	if err != nil {
		return Range{}, fmt.Errorf("decode start key: %w", err)
	}
	e, err := DecodeKey(enc.End)
	if err != nil {
		return Range{}, fmt.Errorf("decode end key: %w", err)
	}
	return Range{Start: s, End: e}, nil
}
