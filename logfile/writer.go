package logfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v14/parquet"
	"github.com/apache/arrow/go/v14/parquet/compress"
	"github.com/apache/arrow/go/v14/parquet/file"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// DefaultRowGroupBytes is the default target of uncompressed bytes per row
// group: the unit of a range read and of a reader's memory.
const DefaultRowGroupBytes = 8 << 20

// maxStatsSize bounds the key statistics kept per row group and page. Keys
// longer than this leave their row group without key statistics (it is then
// never pruned, which is correct but slower).
const maxStatsSize = 64 << 10

// rowOverhead approximates the fixed uncompressed bytes of a row besides key
// and values (two INT64, one INT32, definition levels).
const rowOverhead = 8 + 8 + 4 + 2

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// dataPageSize is the target encoded size of a data page (the default of
// parquet writers).
const dataPageSize = 1 << 20

// WriterOptions tune a Writer. The zero value is the production setting.
type WriterOptions struct {
	// RowGroupBytes is the target uncompressed size of a row group
	// (default DefaultRowGroupBytes). A row group is cut after the row that
	// reaches it, so one huge row makes one huge row group.
	RowGroupBytes int64
	// Compression: UNSPECIFIED and ZSTD mean zstd; NONE writes uncompressed
	// pages (for local spill runs that are read once, soon).
	Compression pitrpb.Compression
	// CompressionLevel is the zstd level (0: the codec's default, 3).
	CompressionLevel int
}

// Stats describe a finished file. DataFile turns them into the meta entry.
type Stats struct {
	Size         int64    // bytes written
	SHA256       [32]byte // of exactly the bytes written
	Rows         int64
	MinKey       []byte // first key (nil when Rows == 0)
	MaxKey       []byte // last key
	MinCommitTS  uint64
	MaxCommitTS  uint64
	MinStartTS   uint64
	LogicalBytes int64 // sum of Row.LogicalSize
}

// DataFile is the meta entry of the file stored at path.
func (s Stats) DataFile(path string) *pitrpb.DataFile {
	return &pitrpb.DataFile{
		Path:         path,
		Size:         s.Size,
		Sha256:       bytes.Clone(s.SHA256[:]),
		Rows:         s.Rows,
		MinKey:       bytes.Clone(s.MinKey),
		MaxKey:       bytes.Clone(s.MaxKey),
		MinCommitTs:  s.MinCommitTS,
		MaxCommitTs:  s.MaxCommitTS,
		MinStartTs:   s.MinStartTS,
		LogicalBytes: s.LogicalBytes,
	}
}

// sink counts, hashes and forwards what the parquet writer produces. While
// footer is set it holds the bytes back so Close can stamp the footer CRC.
type sink struct {
	w      io.Writer
	n      int64
	sha    hash.Hash
	crc    uint32 // CRC-32C of the bytes since the last reset
	err    error
	footer *bytes.Buffer
}

func (s *sink) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.footer != nil {
		return s.footer.Write(p)
	}
	n, err := s.w.Write(p)
	s.sha.Write(p[:n])
	s.crc = crc32.Update(s.crc, castagnoli, p[:n])
	s.n += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		s.err = err
	}
	return n, err
}

type span struct{ off, end int }

type rowGroupRange struct {
	off, length int64
	crc         uint32
}

// Writer writes one data file. Rows must arrive in Compare order. It is not
// safe for concurrent use. Memory: one buffered row group (RowGroupBytes)
// plus the encoder's pages.
type Writer struct {
	opts WriterOptions
	sink *sink
	fw   *file.Writer
	err  error // sticky
	done bool

	// The buffered row group: key and value bytes in arena.
	arena    []byte
	keys     []span
	vals     []span // off < 0: null
	olds     []span
	commits  []int64
	starts   []int64
	ops      []int32
	buffered int64

	// Encoding scratch, reused across row groups.
	baKeys, baVals, baOlds []parquet.ByteArray
	defVals, defOlds       []int16

	groups        []rowGroupRange
	rawFlushed    int64 // uncompressed bytes of the flushed row groups
	storedFlushed int64 // their encoded size

	stats   Stats
	lastKey []byte
	lastTS  uint64
}

// NewWriter starts a data file on w. w is not closed by the Writer.
func NewWriter(w io.Writer, opts WriterOptions) (_ *Writer, err error) {
	if opts.RowGroupBytes <= 0 {
		opts.RowGroupBytes = DefaultRowGroupBytes
	}
	codec := compress.Codecs.Zstd
	switch opts.Compression {
	case pitrpb.Compression_COMPRESSION_UNSPECIFIED, pitrpb.Compression_COMPRESSION_ZSTD:
	case pitrpb.Compression_COMPRESSION_NONE:
		codec = compress.Codecs.Uncompressed
	default:
		return nil, fmt.Errorf("logfile: unknown compression %v", opts.Compression)
	}
	level := compress.DefaultCompressionLevel
	if opts.CompressionLevel != 0 {
		level = opts.CompressionLevel
	}
	props := parquet.NewWriterProperties(
		parquet.WithDictionaryDefault(false),
		parquet.WithCompression(codec),
		parquet.WithCompressionLevel(level),
		parquet.WithStats(true),
		parquet.WithStatsFor(columns[colValue].name, false),
		parquet.WithStatsFor(columns[colOldValue].name, false),
		parquet.WithMaxStatsSize(maxStatsSize),
		parquet.WithMaxRowGroupLength(math.MaxInt64),
		parquet.WithDataPageSize(dataPageSize),
		parquet.WithEncodingFor(columns[colCommitTS].name, parquet.Encodings.DeltaBinaryPacked),
		parquet.WithEncodingFor(columns[colStartTS].name, parquet.Encodings.DeltaBinaryPacked),
	)
	s := &sink{w: w, sha: sha256.New()}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("logfile: start file: %v", r)
			if s.err != nil {
				err = fmt.Errorf("logfile: start file: %w", s.err)
			}
		}
	}()
	fw := file.NewParquetWriter(s, fileSchema(), file.WithWriterProps(props))
	if s.err != nil {
		return nil, fmt.Errorf("logfile: start file: %w", s.err)
	}
	return &Writer{opts: opts, sink: s, fw: fw}, nil
}

// Write appends r. Rows must come in Compare order; rows equal under
// Compare (duplicates) are allowed. The Writer copies what it keeps.
func (w *Writer) Write(r *Row) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return errors.New("logfile: write after close")
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("logfile: write: %w", err)
	}
	if w.stats.Rows > 0 {
		if c := bytes.Compare(r.Key, w.lastKey); c < 0 || c == 0 && r.CommitTS > w.lastTS {
			return fmt.Errorf("logfile: write: row (%x, %d) out of order after (%x, %d)", r.Key, r.CommitTS, w.lastKey, w.lastTS)
		}
	}

	st := &w.stats
	if st.Rows == 0 {
		st.MinKey = bytes.Clone(r.Key)
		if st.MinKey == nil {
			st.MinKey = []byte{}
		}
		st.MinCommitTS, st.MaxCommitTS, st.MinStartTS = r.CommitTS, r.CommitTS, r.StartTS
	}
	st.Rows++
	st.MinCommitTS = min(st.MinCommitTS, r.CommitTS)
	st.MaxCommitTS = max(st.MaxCommitTS, r.CommitTS)
	st.MinStartTS = min(st.MinStartTS, r.StartTS)
	st.LogicalBytes += r.LogicalSize()
	w.lastKey = append(w.lastKey[:0], r.Key...)
	w.lastTS = r.CommitTS

	w.keys = append(w.keys, w.push(r.Key))
	if r.Op == OpPut {
		w.vals = append(w.vals, w.push(r.Value))
	} else {
		w.vals = append(w.vals, span{-1, -1})
	}
	if r.HasOldValue {
		w.olds = append(w.olds, w.push(r.OldValue))
	} else {
		w.olds = append(w.olds, span{-1, -1})
	}
	w.commits = append(w.commits, int64(r.CommitTS))
	w.starts = append(w.starts, int64(r.StartTS))
	w.ops = append(w.ops, int32(r.Op))
	w.buffered += int64(len(r.Key)+len(r.Value)+len(r.OldValue)) + rowOverhead
	if w.buffered >= w.opts.RowGroupBytes {
		return w.flushRowGroup()
	}
	return nil
}

func (w *Writer) push(b []byte) span {
	off := len(w.arena)
	w.arena = append(w.arena, b...)
	return span{off, len(w.arena)}
}

// Size is the approximate size the file has so far: the bytes written plus
// the buffered row group at the compression ratio seen so far. Use it to cut
// files at a target size.
func (w *Writer) Size() int64 {
	pending := w.buffered
	if w.rawFlushed > 0 {
		pending = int64(float64(pending) * float64(w.storedFlushed) / float64(w.rawFlushed))
	}
	return w.sink.n + pending
}

func (w *Writer) flushRowGroup() (err error) {
	n := len(w.keys)
	if n == 0 {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("logfile: write row group: %v", r)
		}
		if w.sink.err != nil {
			err = fmt.Errorf("logfile: write row group: %w", w.sink.err)
		}
		if err != nil {
			w.err = err
		}
	}()

	w.baKeys = w.baKeys[:0]
	w.baVals, w.defVals = w.baVals[:0], w.defVals[:0]
	w.baOlds, w.defOlds = w.baOlds[:0], w.defOlds[:0]
	for i := 0; i < n; i++ {
		k := w.keys[i]
		w.baKeys = append(w.baKeys, w.arena[k.off:k.end:k.end])
		if v := w.vals[i]; v.off >= 0 {
			w.baVals = append(w.baVals, w.arena[v.off:v.end:v.end])
			w.defVals = append(w.defVals, 1)
		} else {
			w.defVals = append(w.defVals, 0)
		}
		if v := w.olds[i]; v.off >= 0 {
			w.baOlds = append(w.baOlds, w.arena[v.off:v.end:v.end])
			w.defOlds = append(w.defOlds, 1)
		} else {
			w.defOlds = append(w.defOlds, 0)
		}
	}

	start := w.sink.n
	w.sink.crc = 0
	rg := w.fw.AppendRowGroup()
	for c := 0; c < numCols; c++ {
		cw, err := rg.NextColumn()
		if err != nil {
			return fmt.Errorf("logfile: column %s: %w", columns[c].name, err)
		}
		switch c {
		case colKey:
			_, err = cw.(*file.ByteArrayColumnChunkWriter).WriteBatch(w.baKeys, nil, nil)
		case colCommitTS:
			_, err = cw.(*file.Int64ColumnChunkWriter).WriteBatch(w.commits, nil, nil)
		case colStartTS:
			_, err = cw.(*file.Int64ColumnChunkWriter).WriteBatch(w.starts, nil, nil)
		case colOp:
			_, err = cw.(*file.Int32ColumnChunkWriter).WriteBatch(w.ops, nil, nil)
		case colValue:
			_, err = cw.(*file.ByteArrayColumnChunkWriter).WriteBatch(w.baVals, w.defVals, nil)
		case colOldValue:
			_, err = cw.(*file.ByteArrayColumnChunkWriter).WriteBatch(w.baOlds, w.defOlds, nil)
		}
		if err != nil {
			return fmt.Errorf("logfile: column %s: %w", columns[c].name, err)
		}
	}
	if err := rg.Close(); err != nil {
		return fmt.Errorf("logfile: close row group: %w", err)
	}
	if w.sink.err != nil {
		return nil // reported by the deferred check
	}
	w.groups = append(w.groups, rowGroupRange{off: start, length: w.sink.n - start, crc: w.sink.crc})
	w.rawFlushed += w.buffered
	w.storedFlushed += w.sink.n - start

	w.arena = w.arena[:0]
	w.keys, w.vals, w.olds = w.keys[:0], w.vals[:0], w.olds[:0]
	w.commits, w.starts, w.ops = w.commits[:0], w.starts[:0], w.ops[:0]
	w.buffered = 0
	return nil
}

// Close writes the last row group and the footer and returns the file's
// stats. It does not close the io.Writer given to NewWriter.
func (w *Writer) Close() (_ Stats, err error) {
	if w.done {
		return Stats{}, errors.New("logfile: close twice")
	}
	w.done = true
	if w.err != nil {
		return Stats{}, w.err
	}
	if err := w.flushRowGroup(); err != nil {
		return Stats{}, err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("logfile: write footer: %v", r)
		}
		if w.sink.err != nil {
			err = fmt.Errorf("logfile: write footer: %w", w.sink.err)
		}
		if err != nil {
			w.err = err
		}
	}()

	var rgs strings.Builder
	for i, g := range w.groups {
		if i > 0 {
			rgs.WriteByte(',')
		}
		fmt.Fprintf(&rgs, "%d:%d:%08x", g.off, g.length, g.crc)
	}
	for _, kv := range [][2]string{
		{kvFormatVersion, strconv.Itoa(DataFormatVersion)},
		{kvSortOrder, sortOrder},
		{kvRowGroups, rgs.String()},
		{kvFooterCRC, crcPlaceholder}, // last: see stampFooter
	} {
		if err := w.fw.AppendKeyValueMetadata(kv[0], kv[1]); err != nil {
			return Stats{}, fmt.Errorf("logfile: footer metadata: %w", err)
		}
	}
	w.sink.footer = &bytes.Buffer{}
	if err := w.fw.Close(); err != nil {
		return Stats{}, fmt.Errorf("logfile: write footer: %w", err)
	}
	buf := w.sink.footer.Bytes()
	w.sink.footer = nil
	if err := stampFooter(buf); err != nil {
		return Stats{}, fmt.Errorf("logfile: write footer: %w", err)
	}
	if _, err := w.sink.Write(buf); err != nil {
		return Stats{}, nil // reported by the deferred check
	}

	st := w.stats
	st.Size = w.sink.n
	copy(st.SHA256[:], w.sink.sha.Sum(nil))
	if st.Rows > 0 {
		st.MaxKey = bytes.Clone(w.lastKey)
		if st.MaxKey == nil {
			st.MaxKey = []byte{}
		}
	}
	return st, nil
}

const crcPlaceholder = "00000000"

// footerCRCValue locates the value of the footer CRC entry in the thrift
// bytes of a footer: the last occurrence of its key (nothing after the
// key-value list holds user data), followed within a few bytes (the thrift
// field header and length) by the 8 hex digits.
func footerCRCValue(meta []byte) (int, error) {
	k := bytes.LastIndex(meta, []byte(kvFooterCRC))
	if k < 0 {
		return 0, errors.New("no footer CRC")
	}
	from := k + len(kvFooterCRC)
	// compact thrift: field header (1 byte) + varint length 8 (1 byte).
	if from+2+len(crcPlaceholder) > len(meta) || meta[from+1] != byte(len(crcPlaceholder)) {
		return 0, errors.New("malformed footer CRC entry")
	}
	return from + 2, nil
}

// footerCRC is the CRC-32C of the footer with the CRC value itself replaced
// by the placeholder.
func footerCRC(meta []byte, at int) uint32 {
	c := crc32.Update(0, castagnoli, meta[:at])
	c = crc32.Update(c, castagnoli, []byte(crcPlaceholder))
	return crc32.Update(c, castagnoli, meta[at+len(crcPlaceholder):])
}

// stampFooter writes the footer CRC into buf = footer ++ len ++ "PAR1".
func stampFooter(buf []byte) error {
	if len(buf) < 8 || int(binary.LittleEndian.Uint32(buf[len(buf)-8:])) != len(buf)-8 {
		return errors.New("unexpected footer layout")
	}
	meta := buf[:len(buf)-8]
	at, err := footerCRCValue(meta)
	if err != nil {
		return err
	}
	if string(meta[at:at+len(crcPlaceholder)]) != crcPlaceholder {
		return errors.New("footer CRC placeholder not found")
	}
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], footerCRC(meta, at))
	hex.Encode(meta[at:], c[:])
	return nil
}
