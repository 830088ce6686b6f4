package logfile

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the checked-in format fixtures")

// fixtureRows are the rows of testdata/v1.parquet, written by the first
// build that shipped data format v1. The file must keep decoding to exactly
// these rows forever.
func fixtureRows() []*Row {
	return []*Row{
		{Key: []byte{}, CommitTS: 0x0654_3210_0000_0005, StartTS: 0x0654_3210_0000_0001, Op: OpPut, Value: []byte("empty key")},
		{Key: []byte{0x00, 0xff, 0x10}, CommitTS: 0x0654_3210_0000_0009, StartTS: 0x0654_3210_0000_0008, Op: OpDelete, HasOldValue: true, OldValue: []byte("was here")},
		{Key: []byte{0x00, 0xff, 0x10}, CommitTS: 0x0654_3210_0000_0007, StartTS: 0x0654_3210_0000_0006, Op: OpPut, Value: []byte{}},
		{Key: []byte("t\x80\x00\x00\x00\x00\x00\x00\x01_r\x80\x00\x00\x00\x00\x00\x00\x01"), CommitTS: 0x0654_3210_0004_0000, StartTS: 0x0654_3210_0003_0000, Op: OpPut, Value: bytes.Repeat([]byte("value-"), 50)},
		{Key: []byte("t\x80\x00\x00\x00\x00\x00\x00\x01_r\x80\x00\x00\x00\x00\x00\x00\x01"), CommitTS: 0x0654_3210_0004_0000, StartTS: 0x0654_3210_0003_0000, Op: OpPut, Value: bytes.Repeat([]byte("value-"), 50)},
		{Key: []byte("zz"), CommitTS: 1 << 62, StartTS: 1<<62 - 1, Op: OpPut, Value: []byte("last"), HasOldValue: true, OldValue: []byte{}},
	}
}

const fixturePath = "testdata/v1.parquet"

func TestFixtureV1(t *testing.T) {
	if *update {
		data, _ := writeFile(t, fixtureRows(), WriterOptions{RowGroupBytes: 200})
		require.NoError(t, os.MkdirAll(filepath.Dir(fixturePath), 0o755))
		require.NoError(t, os.WriteFile(fixturePath, data, 0o644))
	}
	data, err := os.ReadFile(fixturePath)
	require.NoError(t, err)
	rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err)
	require.Greater(t, rd.NumRowGroups(), 1, "the fixture has several row groups")
	requireRowsEqual(t, fixtureRows(), readAll(t, rd.Iter(nil, nil)))

	// Today's writer still produces the same bytes. Not a compatibility
	// requirement (a new parquet library may encode differently while
	// staying v1), but a change here deserves a look.
	now, _ := writeFile(t, fixtureRows(), WriterOptions{RowGroupBytes: 200})
	if !bytes.Equal(now, data) {
		t.Logf("note: the writer's bytes differ from %s (still decodes)", fixturePath)
	}
}

func TestFormatVersionRefused(t *testing.T) {
	// A file claiming version 2, with its footer CRC stamped correctly:
	// ErrFormat, not ErrCorrupt.
	data, _ := writeFile(t, fixtureRows(), WriterOptions{})
	meta := data[len(data)-8-int(le32(data[len(data)-8:])) : len(data)-8]
	i := bytes.Index(meta, []byte(kvFormatVersion))
	require.Positive(t, i)
	v := i + len(kvFormatVersion) + 2
	require.Equal(t, byte('1'), meta[v])
	meta[v] = '2'
	at, err := footerCRCValue(meta)
	require.NoError(t, err)
	copy(meta[at:], crcPlaceholder)
	require.NoError(t, stampFooter(data[len(data)-8-len(meta):]))
	_, err = NewReader(bytes.NewReader(data), int64(len(data)))
	require.ErrorIs(t, err, ErrFormat)
	require.NotErrorIs(t, err, ErrCorrupt)
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func readFileUp(rel string) ([]byte, error) { return os.ReadFile(filepath.Join("..", rel)) }
