package logfile

import (
	"bytes"
	"testing"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func tso(t time.Time, logical uint64) uint64 { return keyspace.Compose(t.UnixMilli(), int64(logical)) }

func TestPaths(t *testing.T) {
	ts := tso(time.Date(2026, 11, 22, 13, 45, 6, 0, time.UTC), 7)
	for _, tc := range []struct{ name, got, want string }{
		{"data", DataPath(4, ts, "0b3d"), "log/20261122/13/4/" + hex16(ts) + "-0b3d.parquet"},
		{"data-midnight", DataPath(12, tso(time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC), 0), "x"), "log/20270102/00/12/" + hex16(tso(time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC), 0)) + "-x.parquet"},
		{"meta", MetaPath(ts, 4), "meta/" + hex16(ts) + "-0000000000000004.meta"},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, tc.got) })
	}
	// Names sort by time.
	require.Less(t, MetaPath(ts, 9), MetaPath(ts+1, 1))
	require.Less(t, DataPath(4, ts, "z"), DataPath(4, ts+1, "a"))
}

func hex16(v uint64) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 16)
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return string(b)
}

func TestParseMetaPath(t *testing.T) {
	for _, tc := range []struct {
		name      string
		path      string
		ts, store uint64
		ok        bool
	}{
		{"round-trip", MetaPath(0x0654321000000001, 4), 0x0654321000000001, 4, true},
		{"compacted-dir", "compacted/x/" + MetaPath(5, 6)[len(MetaPrefix):], 5, 6, true},
		{"bare", "0000000000000005-0000000000000006.meta", 5, 6, true},
		{"max", MetaPath(^uint64(0), ^uint64(0)), ^uint64(0), ^uint64(0), true},
		{"upper-hex", "meta/000000000000000A-0000000000000006.meta", 0, 0, false},
		{"short", "meta/5-6.meta", 0, 0, false},
		{"suffix", "meta/0000000000000005-0000000000000006.meta.tmp", 0, 0, false},
		{"no-dash", "meta/0000000000000005_0000000000000006.meta", 0, 0, false},
		{"sign", "meta/+000000000000005-0000000000000006.meta", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts, store, err := ParseMetaPath(tc.path)
			if !tc.ok {
				require.ErrorIs(t, err, ErrCorrupt)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.ts, ts)
			require.Equal(t, tc.store, store)
		})
	}
}

func sampleMeta() *pitrpb.Meta {
	return &pitrpb.Meta{
		StoreId: 4, FlushTs: 99, Task: "t",
		Files:   []*pitrpb.DataFile{{Path: "log/a.parquet", Size: 10, Sha256: bytes.Repeat([]byte{1}, 32), Rows: 2, MinKey: []byte("a"), MaxKey: []byte("b"), MinCommitTs: 5, MaxCommitTs: 9, MinStartTs: 4, LogicalBytes: 7}},
		Regions: []*pitrpb.RegionCoverage{{RegionId: 2, EpochVersion: 3, StartKey: []byte("a"), EndKey: []byte("c"), FromTs: 1, ToTs: 99}},
	}
}

func TestMetaCodec(t *testing.T) {
	in := sampleMeta()
	b, err := EncodeMeta(in)
	require.NoError(t, err)
	require.Zero(t, in.FormatVersion, "EncodeMeta does not modify its argument")
	out, err := DecodeMeta(b)
	require.NoError(t, err)
	require.Equal(t, FormatVersion, out.FormatVersion)
	in.FormatVersion = FormatVersion
	require.True(t, proto.Equal(in, out))
	b2, _ := EncodeMeta(out)
	require.Equal(t, b, b2, "deterministic")

	for _, tc := range []struct {
		name string
		b    func() []byte
		err  error
	}{
		{"garbage", func() []byte { return []byte{0xff, 0xff, 0xff} }, ErrCorrupt},
		{"no-version", func() []byte { b, _ := proto.Marshal(sampleMeta()); return b }, ErrCorrupt},
		{"bare-v2", func() []byte { m := sampleMeta(); m.FormatVersion = 2; b, _ := proto.Marshal(m); return b }, ErrCorrupt},
		{"newer", func() []byte { b, _ := EncodeMeta(sampleMeta()); return reframe(t, b, byte(MetaFormatVersion)+1) }, ErrFormat},
		{"legacy-v1", func() []byte { m := sampleMeta(); m.FormatVersion = 1; b, _ := proto.Marshal(m); return b }, nil},
		{"bad-sha", func() []byte {
			m := sampleMeta()
			m.FormatVersion = 1
			m.Files[0].Sha256 = []byte{1}
			b, _ := proto.Marshal(m)
			return b
		}, ErrCorrupt},
		{"bad-interval", func() []byte {
			m := sampleMeta()
			m.FormatVersion = 1
			m.Regions[0].FromTs = 100
			b, _ := proto.Marshal(m)
			return b
		}, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMeta(tc.b())
			if tc.err == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.err)
		})
	}
}

func TestSmallObjectCodecs(t *testing.T) {
	ti := &pitrpb.TaskInfo{Name: "t", StartTs: 5, Ranges: []*pitrpb.KeyRange{{StartKey: []byte("a")}}, Compression: pitrpb.Compression_COMPRESSION_ZSTD}
	b, err := EncodeTaskInfo(ti)
	require.NoError(t, err)
	gotTI, err := DecodeTaskInfo(b)
	require.NoError(t, err)
	require.Equal(t, "t", gotTI.Name)
	require.Equal(t, FormatVersion, gotTI.FormatVersion)

	b, err = EncodeLock(&pitrpb.Lock{Task: "t", ClusterId: 7})
	require.NoError(t, err)
	gotLock, err := DecodeLock(b)
	require.NoError(t, err)
	require.Equal(t, uint64(7), gotLock.ClusterId)

	b, err = EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: "t", Ts: 42, Term: 3})
	require.NoError(t, err)
	gotCP, err := DecodeCheckpoint(b)
	require.NoError(t, err)
	require.Equal(t, uint64(42), gotCP.Ts)

	_, err = DecodeCheckpoint(reframe(t, b, 9))
	require.ErrorIs(t, err, ErrFormat)
	_, err = DecodeLock(b)
	require.ErrorIs(t, err, ErrCorrupt, "a checkpoint is not a lock")
	_, err = DecodeLock(nil)
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestMetaFixtureDecodes(t *testing.T) {
	// proto/testdata/meta-v1.pb is the shipped meta v1 fixture.
	b, err := readFileUp("proto/testdata/meta-v1.pb")
	require.NoError(t, err)
	m, err := DecodeMeta(b)
	require.NoError(t, err)
	require.Equal(t, uint64(4), m.StoreId)
}
