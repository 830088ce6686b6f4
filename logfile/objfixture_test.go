package logfile

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// The messages stored in testdata/objects/*-v<N>*: every shipped version of
// every small durable object must keep decoding to exactly these.

func fixtureObjMeta() *pitrpb.Meta {
	return &pitrpb.Meta{
		StoreId: 4, FlushTs: 0x0654_3210_0000_0001, Task: "fixture",
		Files: []*pitrpb.DataFile{{
			Path: "log/20261122/13/4/0654321000000001-0b3d.parquet", Size: 1234,
			Sha256: bytes.Repeat([]byte{0xab}, 32), Rows: 10, MinKey: []byte("a"), MaxKey: []byte("z"),
			MinCommitTs: 100, MaxCommitTs: 200, MinStartTs: 90, LogicalBytes: 4096,
		}},
		Regions: []*pitrpb.RegionCoverage{{RegionId: 2, EpochVersion: 5, EpochConfVer: 1, StartKey: []byte("a"), FromTs: 50, ToTs: 210}},
	}
}

// fixtureObjMetaV3 continues fixtureObjMeta's chain (format 3).
func fixtureObjMetaV3() *pitrpb.Meta {
	return &pitrpb.Meta{
		FormatVersion: MetaFormatVersion, StoreId: 4, FlushTs: 0x0654_3210_0000_0002, Task: "fixture",
		Regions:    []*pitrpb.RegionCoverage{{RegionId: 9, EpochVersion: 6, EpochConfVer: 1, StartKey: []byte("m"), EndKey: []byte("t"), FromTs: 60, ToTs: 300}},
		PrevMeta:   "meta/0654321000000001-0000000000000004.meta",
		ExtendToTs: 310,
		Extends:    []*pitrpb.CoverageExtend{{ToTs: 250, RegionIds: []uint64{3, 7}}},
		Dropped:    []uint64{5},
	}
}

func fixtureObjTask() *pitrpb.TaskInfo {
	return &pitrpb.TaskInfo{
		Name: "fixture", StartTs: 0x0654_3210_0000_0000,
		Ranges:      []*pitrpb.KeyRange{{StartKey: []byte("a"), EndKey: []byte("m")}, {StartKey: []byte("t")}},
		Compression: pitrpb.Compression_COMPRESSION_ZSTD, ClusterId: 7, CreatedUnixMs: 1764547200000, StartedEmpty: true,
	}
}

func fixtureObjLock() *pitrpb.Lock {
	return &pitrpb.Lock{Task: "fixture", ClusterId: 7, CreatedUnixMs: 1764547200000, CreatedBy: "host/42"}
}

func fixtureObjCheckpoint() *pitrpb.GlobalCheckpoint {
	return &pitrpb.GlobalCheckpoint{Task: "fixture", Ts: 0x0654_3210_0004_0000, WrittenUnixMs: 1764547260000, Term: 3}
}

// objectFixtures are the checked-in small objects of every shipped version.
var objectFixtures = []struct {
	file    string
	version uint32
	decode  func([]byte) (proto.Message, error)
	encode  func() ([]byte, error)
	want    func() versioned
}{
	{"meta-v1.meta", 1, decodeAny(DecodeMeta), nil, func() versioned { return fixtureObjMeta() }},
	{"task-v1.pb", 1, decodeAny(DecodeTaskInfo), nil, func() versioned { return fixtureObjTask() }},
	{"lock-v1", 1, decodeAny(DecodeLock), nil, func() versioned { return fixtureObjLock() }},
	{"checkpoint-v1", 1, decodeAny(DecodeCheckpoint), nil, func() versioned { return fixtureObjCheckpoint() }},
	{"meta-v2.meta", 2, decodeAny(DecodeMeta), func() ([]byte, error) { return EncodeMeta(fixtureObjMeta()) }, func() versioned { return fixtureObjMeta() }},
	{"meta-v3.meta", 3, decodeAny(DecodeMeta), func() ([]byte, error) { return EncodeMeta(fixtureObjMetaV3()) }, func() versioned { return fixtureObjMetaV3() }},
	{"task-v2.pb", 2, decodeAny(DecodeTaskInfo), func() ([]byte, error) { return EncodeTaskInfo(fixtureObjTask()) }, func() versioned { return fixtureObjTask() }},
	{"lock-v2", 2, decodeAny(DecodeLock), func() ([]byte, error) { return EncodeLock(fixtureObjLock()) }, func() versioned { return fixtureObjLock() }},
	{"checkpoint-v2", 2, decodeAny(DecodeCheckpoint), func() ([]byte, error) { return EncodeCheckpoint(fixtureObjCheckpoint()) }, func() versioned { return fixtureObjCheckpoint() }},
}

func decodeAny[M proto.Message](f func([]byte) (M, error)) func([]byte) (proto.Message, error) {
	return func(b []byte) (proto.Message, error) { return f(b) }
}

// withVersion returns want with its format_version set.
func withVersion(m versioned, v uint32) proto.Message {
	c := proto.Clone(m)
	r := c.ProtoReflect()
	r.Set(r.Descriptor().Fields().ByName("format_version"), protoreflect.ValueOfUint32(v))
	return c
}

// reframe sets the frame version of an encoded object to v and restamps
// its CRC: a well-formed object of a version this build does not know.
func reframe(t *testing.T, b []byte, v byte) []byte {
	t.Helper()
	require.Equal(t, byte(0x08), b[0])
	b = append([]byte(nil), b...)
	b[1] = v
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	return b
}

// TestObjectFixtures: every shipped version of meta, task.pb, pitr.lock and
// checkpoint/global still decodes to the same message, and this build
// writes exactly the version 2 fixtures (and the version 3 meta).
func TestObjectFixtures(t *testing.T) {
	for _, fx := range objectFixtures {
		t.Run(fx.file, func(t *testing.T) {
			path := filepath.Join("testdata", "objects", fx.file)
			if *update && fx.encode != nil {
				b, err := fx.encode()
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(path, b, 0o644))
			}
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			got, err := fx.decode(b)
			require.NoError(t, err)
			require.True(t, proto.Equal(withVersion(fx.want(), fx.version), got), "decodes to %v", got)
			if fx.encode != nil {
				now, err := fx.encode()
				require.NoError(t, err)
				require.Equal(t, b, now, "this build writes the version %d fixture byte for byte", fx.version)
			}
		})
	}
}

// TestObjectBitFlips: every single-bit flip of a framed object (version 2,
// or a version 3 meta) is ErrCorrupt (doc.go says why), never another
// error and never a decode.
func TestObjectBitFlips(t *testing.T) {
	for _, fx := range objectFixtures {
		if fx.encode == nil {
			continue
		}
		t.Run(fx.file, func(t *testing.T) {
			orig, err := fx.encode()
			require.NoError(t, err)
			for bit := 0; bit < 8*len(orig); bit++ {
				b := append([]byte(nil), orig...)
				b[bit/8] ^= 1 << (bit % 8)
				_, err := fx.decode(b)
				require.ErrorIs(t, err, ErrCorrupt, "bit %d", bit)
			}
			for n := 0; n < len(orig); n++ {
				_, err := fx.decode(orig[:n])
				require.ErrorIs(t, err, ErrCorrupt, "truncated to %d bytes", n)
			}
		})
	}
}

// TestObjectNewerFrame: a well-formed frame of a later version is
// ErrFormat; a pitr before version 2 (a plain protobuf parse, which is what
// it did) sees format_version 2 in a version 2 frame and refuses it as too
// new rather than misreading it.
func TestObjectNewerFrame(t *testing.T) {
	for _, fx := range objectFixtures {
		if fx.encode == nil {
			continue
		}
		t.Run(fx.file, func(t *testing.T) {
			b, err := fx.encode()
			require.NoError(t, err)
			_, err = fx.decode(reframe(t, b, byte(MetaFormatVersion)+1))
			require.ErrorIs(t, err, ErrFormat)
			require.NotErrorIs(t, err, ErrCorrupt)

			old := fx.want().ProtoReflect().New().Interface().(versioned)
			require.NoError(t, proto.Unmarshal(b, old), "a v1 reader parses the frame")
			require.Equal(t, fx.version, old.GetFormatVersion(), "and refuses it as version %d", fx.version)
		})
	}
}

// TestFrameIsProtoFrame: the hand-written frame is exactly the
// deterministic encoding of pitrpb.Frame, so any protobuf tool reads it.
func TestFrameIsProtoFrame(t *testing.T) {
	b, err := EncodeCheckpoint(fixtureObjCheckpoint())
	require.NoError(t, err)
	var f pitrpb.Frame
	require.NoError(t, proto.Unmarshal(b, &f))
	require.Equal(t, FormatVersion, f.FormatVersion)
	require.Equal(t, pitrpb.ObjectKind_OBJECT_KIND_GLOBAL_CHECKPOINT, f.Kind)
	require.Equal(t, crc32.Checksum(b[:len(b)-4], castagnoli), f.Crc32C)
	again, err := proto.MarshalOptions{Deterministic: true}.Marshal(&f)
	require.NoError(t, err)
	require.Equal(t, b, again)
	got, err := DecodeCheckpoint(b)
	require.NoError(t, err)
	var inner pitrpb.GlobalCheckpoint
	require.NoError(t, proto.Unmarshal(f.Payload, &inner))
	require.True(t, proto.Equal(got, &inner))
}

// FuzzDecodeObjects: no input makes a small-object decoder panic, and
// whatever one accepts survives a round trip through this build's encoder.
func FuzzDecodeObjects(f *testing.F) {
	for _, fx := range objectFixtures {
		b, err := os.ReadFile(filepath.Join("testdata", "objects", fx.file))
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := DecodeMeta(b); err == nil {
			again, err := EncodeMeta(m)
			require.NoError(t, err)
			back, err := DecodeMeta(again)
			require.NoError(t, err)
			if m.FormatVersion < MetaFormatVersion {
				m.FormatVersion = FormatVersion
			}
			require.True(t, proto.Equal(m, back))
		}
		for _, dec := range []func([]byte) (proto.Message, error){decodeAny(DecodeTaskInfo), decodeAny(DecodeLock), decodeAny(DecodeCheckpoint)} {
			_, _ = dec(b)
		}
	})
}

// TestFrameVersionFlippedToLegacy: the two-bit flip that turns a frame's
// 08 02 into the legacy start 08 01 is still refused: the frame's own
// fields are unknown to the message, and a version 1 object never has
// unknown fields.
func TestFrameVersionFlippedToLegacy(t *testing.T) {
	for _, fx := range objectFixtures {
		if fx.version != FormatVersion {
			continue
		}
		t.Run(fx.file, func(t *testing.T) {
			b, err := fx.encode()
			require.NoError(t, err)
			b[1] = 0x01
			_, err = fx.decode(b)
			require.ErrorIs(t, err, ErrCorrupt)
		})
	}
}
