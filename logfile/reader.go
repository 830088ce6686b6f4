package logfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v14/arrow/memory"
	"github.com/apache/arrow/go/v14/parquet"
	"github.com/apache/arrow/go/v14/parquet/compress"
	"github.com/apache/arrow/go/v14/parquet/file"
	"github.com/apache/arrow/go/v14/parquet/metadata"
)

// Iterator walks rows in file (Compare) order. Row's result, and the slices
// in it, are valid until the next call to Next. After Next returns false,
// Err tells why (nil: the end). Close releases the iterator's memory; it is
// safe to call more than once.
type Iterator interface {
	Next() bool
	Row() *Row
	Err() error
	Close() error
}

// Reader reads a data file. It checks the whole footer when it is opened
// and every row group, against its CRC-32C, when an iterator reaches it;
// any mismatch is ErrCorrupt. A Reader is safe for concurrent use by several
// iterators. Memory: the parsed footer (a few KiB per row group); each
// iterator additionally holds one encoded row group (briefly two, while it
// opens it) and one decoded page (≤ ~1 MiB) per column.
type Reader struct {
	r      io.ReaderAt
	size   int64
	md     *metadata.FileMetaData
	groups []rowGroup
	rows   int64
}

type rowGroup struct {
	rowGroupRange
	rows           int64
	hasKeyStats    bool
	minKey, maxKey []byte
}

// footerReadAhead is read from the end of a file in one request; most
// footers fit, so opening a file costs one read.
const footerReadAhead = 64 << 10

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// readFull reads len(p) bytes at off. A short read is ErrCorrupt (the file
// is shorter than its own metadata says); any other error is returned as is
// (it may be transient).
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corruptf("short read at %d: %d of %d bytes", off, n, len(p))
	}
	return err
}

// NewReader opens the data file of size bytes behind r. A file that is not a
// well-formed pitr data file is ErrCorrupt; a newer format is ErrFormat.
func NewReader(r io.ReaderAt, size int64) (rd *Reader, err error) {
	defer func() {
		if p := recover(); p != nil {
			rd, err = nil, corruptf("open: %v", p)
		}
	}()
	const tail = 8 // footer length + "PAR1"
	if size < int64(len(magic))+tail {
		return nil, corruptf("file of %d bytes", size)
	}
	var head [4]byte
	if err := readFull(r, head[:], 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	ra := min(size, footerReadAhead)
	buf := make([]byte, ra)
	if err := readFull(r, buf, size-ra); err != nil {
		return nil, fmt.Errorf("read footer: %w", err)
	}
	if string(head[:]) != magic || string(buf[ra-4:]) != magic {
		return nil, corruptf("not a parquet file (no PAR1 magic)")
	}
	metaLen := int64(binary.LittleEndian.Uint32(buf[ra-tail:]))
	footerStart := size - tail - metaLen
	if footerStart < int64(len(magic)) {
		return nil, corruptf("footer length %d in a file of %d bytes", metaLen, size)
	}
	var meta []byte
	if metaLen+tail <= ra {
		meta = buf[ra-tail-metaLen : ra-tail]
	} else {
		meta = make([]byte, metaLen)
		if err := readFull(r, meta, footerStart); err != nil {
			return nil, fmt.Errorf("read footer: %w", err)
		}
	}

	// Check the footer's CRC before parsing it, so damaged bytes never reach
	// the thrift decoder (which trusts lengths it reads).
	if err := checkFooterCRC(meta); err != nil {
		return nil, err
	}
	md, err := metadata.NewFileMetaData(meta, nil)
	if err != nil {
		return nil, corruptf("parse footer: %v", err)
	}
	if v := md.KeyValueMetadata().FindValue(kvFooterCRC); v == nil {
		return nil, corruptf("not a pitr data file (no %s)", kvFooterCRC)
	}
	if err := checkSchema(md); err != nil {
		return nil, corruptf("%v", err)
	}
	kv := md.KeyValueMetadata()
	if v := kv.FindValue(kvFormatVersion); v == nil {
		return nil, corruptf("not a pitr data file (no %s)", kvFormatVersion)
	} else if n, err := strconv.Atoi(*v); err != nil || n <= 0 {
		return nil, corruptf("format version %q", *v)
	} else if n > DataFormatVersion {
		return nil, fmt.Errorf("%w: data file version %d (this build reads up to %d)", ErrFormat, n, DataFormatVersion)
	}
	if v := kv.FindValue(kvSortOrder); v == nil || *v != sortOrder {
		return nil, corruptf("sort order not %q", sortOrder)
	}
	md.WriterVersion() // computed lazily; compute it now, before iterators share md

	rd = &Reader{r: r, size: size, md: md}
	if err := rd.loadRowGroups(footerStart); err != nil {
		return nil, err
	}
	return rd, nil
}

const magic = "PAR1"

// checkFooterCRC verifies the footer CRC over the raw footer bytes (see
// footerCRCValue for how the entry is found without parsing).
func checkFooterCRC(meta []byte) error {
	at, err := footerCRCValue(meta)
	if err != nil {
		return corruptf("footer: %v (not a pitr data file?)", err)
	}
	// Compare as text: the writer writes lower-case hex, and a flipped case
	// bit must not go unnoticed.
	v := meta[at : at+len(crcPlaceholder)]
	if got := fmt.Sprintf("%08x", footerCRC(meta, at)); got != string(v) {
		return corruptf("footer CRC %s, want %q", got, v)
	}
	return nil
}

func (rd *Reader) loadRowGroups(footerStart int64) error {
	md := rd.md
	v := md.KeyValueMetadata().FindValue(kvRowGroups)
	if v == nil {
		return corruptf("no %s", kvRowGroups)
	}
	var ranges []rowGroupRange
	if *v != "" {
		for _, e := range strings.Split(*v, ",") {
			var g rowGroupRange
			p := strings.Split(e, ":")
			if len(p) != 3 {
				return corruptf("row group entry %q", e)
			}
			var err1, err2, err3 error
			g.off, err1 = strconv.ParseInt(p[0], 10, 64)
			g.length, err2 = strconv.ParseInt(p[1], 10, 64)
			c, err3 := strconv.ParseUint(p[2], 16, 32)
			if err1 != nil || err2 != nil || err3 != nil {
				return corruptf("row group entry %q", e)
			}
			g.crc = uint32(c)
			ranges = append(ranges, g)
		}
	}
	if len(ranges) != len(md.RowGroups) {
		return corruptf("%d row group checksums for %d row groups", len(ranges), len(md.RowGroups))
	}
	next := int64(len(magic))
	var total int64
	for i, g := range ranges {
		if g.off != next || g.length <= 0 || g.off+g.length > footerStart {
			return corruptf("row group %d at [%d, +%d) (expected at %d, footer at %d)", i, g.off, g.length, next, footerStart)
		}
		next = g.off + g.length
		rgm := md.RowGroup(i)
		if rgm.NumColumns() != numCols || rgm.NumRows() <= 0 {
			return corruptf("row group %d: %d columns, %d rows", i, rgm.NumColumns(), rgm.NumRows())
		}
		rg := rowGroup{rowGroupRange: g, rows: rgm.NumRows()}
		total += rg.rows
		for c := 0; c < numCols; c++ {
			cc, err := rgm.ColumnChunk(c)
			if err != nil {
				return corruptf("row group %d column %d: %v", i, c, err)
			}
			start := cc.DataPageOffset()
			if cc.HasDictionaryPage() && cc.DictionaryPageOffset() > 0 && start > cc.DictionaryPageOffset() {
				start = cc.DictionaryPageOffset()
			}
			if start < g.off || cc.TotalCompressedSize() <= 0 || start+cc.TotalCompressedSize() > g.off+g.length {
				return corruptf("row group %d column %d at [%d, +%d) outside its row group", i, c, start, cc.TotalCompressedSize())
			}
			if cc.NumValues() != rg.rows {
				return corruptf("row group %d column %d: %d values for %d rows", i, c, cc.NumValues(), rg.rows)
			}
			if comp := cc.Compression(); comp != compress.Codecs.Zstd && comp != compress.Codecs.Uncompressed {
				return corruptf("row group %d column %d: compression %v", i, c, comp)
			}
			if c == colKey {
				st, err := cc.Statistics()
				if err != nil {
					return corruptf("row group %d key statistics: %v", i, err)
				}
				if bs, ok := st.(*metadata.ByteArrayStatistics); ok && bs.HasMinMax() {
					rg.hasKeyStats = true
					rg.minKey, rg.maxKey = bytes.Clone(bs.Min()), bytes.Clone(bs.Max())
					if bytes.Compare(rg.minKey, rg.maxKey) > 0 {
						return corruptf("row group %d: min key > max key", i)
					}
				}
			}
		}
		rd.groups = append(rd.groups, rg)
	}
	if next != footerStart && len(ranges) > 0 {
		return corruptf("%d bytes between the last row group and the footer", footerStart-next)
	}
	if total != md.NumRows {
		return corruptf("row groups hold %d rows, footer says %d", total, md.NumRows)
	}
	rd.rows = total
	return nil
}

// NumRows is the number of rows in the file.
func (rd *Reader) NumRows() int64 { return rd.rows }

// NumRowGroups is the number of row groups in the file.
func (rd *Reader) NumRowGroups() int { return len(rd.groups) }

// Iter returns the rows with start <= key < end (nil: unbounded) in file
// order. Row groups whose key statistics lie outside the range are not read.
func (rd *Reader) Iter(start, end []byte) Iterator {
	it := &iter{rd: rd, start: start, end: end}
	for i, g := range rd.groups {
		if g.hasKeyStats {
			if start != nil && bytes.Compare(g.maxKey, start) < 0 {
				continue
			}
			if end != nil && bytes.Compare(g.minKey, end) >= 0 {
				break
			}
		}
		it.todo = append(it.todo, i)
	}
	return it
}

// batchRows is the number of rows decoded per column at a time.
const batchRows = 1024

type iter struct {
	rd         *Reader
	start, end []byte
	todo       []int // row groups left to read
	err        error
	done       bool

	// the current row group
	rowsLeft              int64
	keyR, valR, oldR      *file.ByteArrayColumnChunkReader
	commitR, startR       *file.Int64ColumnChunkReader
	opR                   *file.Int32ColumnChunkReader
	keys, vals, olds      []parquet.ByteArray
	commits, starts       []int64
	ops                   []int32
	defVals, defOlds      []int16
	n, pos, valPos, olPos int

	row  Row
	prev Row // previous row's key and ts, to check the order
	seen bool
}

func (it *iter) Row() *Row  { return &it.row }
func (it *iter) Err() error { return it.err }

func (it *iter) Close() error {
	it.done = true
	it.todo = nil
	it.dropGroup()
	return nil
}

func (it *iter) dropGroup() {
	it.keyR, it.valR, it.oldR, it.commitR, it.startR, it.opR = nil, nil, nil, nil, nil, nil
	it.rowsLeft, it.n, it.pos = 0, 0, 0
}

func (it *iter) fail(err error) bool {
	it.err = err
	it.done = true
	it.dropGroup()
	return false
}

func (it *iter) Next() (ok bool) {
	if it.done {
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			ok = it.fail(corruptf("decode: %v", p))
		}
	}()
	for {
		if it.pos == it.n {
			if err := it.fill(); err != nil {
				return it.fail(err)
			}
			if it.n == 0 {
				it.done = true
				return false
			}
		}
		i := it.pos
		it.pos++
		r := &it.row
		r.Key = it.keys[i]
		r.CommitTS = uint64(it.commits[i])
		r.StartTS = uint64(it.starts[i])
		r.Op = Op(it.ops[i])
		r.Value = nil
		if it.defVals[i] == 1 {
			r.Value = it.vals[it.valPos]
			if r.Value == nil {
				r.Value = []byte{}
			}
			it.valPos++
		}
		r.OldValue, r.HasOldValue = nil, false
		if it.defOlds[i] == 1 {
			r.OldValue, r.HasOldValue = it.olds[it.olPos], true
			if r.OldValue == nil {
				r.OldValue = []byte{}
			}
			it.olPos++
		}
		if err := it.check(r); err != nil {
			return it.fail(err)
		}
		if it.start != nil && bytes.Compare(r.Key, it.start) < 0 {
			continue
		}
		if it.end != nil && bytes.Compare(r.Key, it.end) >= 0 {
			it.done = true
			it.dropGroup()
			return false
		}
		return true
	}
}

// check refuses rows no Writer writes: a bad op, a value on a delete, a
// negative ts, or a row out of order.
func (it *iter) check(r *Row) error {
	if it.commits[it.pos-1] < 0 || it.starts[it.pos-1] < 0 {
		return corruptf("negative timestamp")
	}
	switch {
	case r.Op == OpPut && r.Value == nil:
		return corruptf("put without a value at key %x", r.Key)
	case r.Op == OpDelete && r.Value != nil:
		return corruptf("delete with a value at key %x", r.Key)
	case r.Op != OpPut && r.Op != OpDelete:
		return corruptf("op %d at key %x", r.Op, r.Key)
	}
	if it.seen {
		if c := bytes.Compare(r.Key, it.prev.Key); c < 0 || c == 0 && r.CommitTS > it.prev.CommitTS {
			return corruptf("rows out of order at key %x", r.Key)
		}
	}
	it.seen = true
	it.prev.Key = append(it.prev.Key[:0], r.Key...)
	it.prev.CommitTS = r.CommitTS
	return nil
}

// fill decodes the next batch, opening the next row group when needed.
// it.n == 0 afterwards means the end.
func (it *iter) fill() error {
	it.n, it.pos, it.valPos, it.olPos = 0, 0, 0, 0
	for it.rowsLeft == 0 {
		it.dropGroup()
		if len(it.todo) == 0 {
			return nil
		}
		g := it.todo[0]
		it.todo = it.todo[1:]
		if err := it.openGroup(g); err != nil {
			return err
		}
	}
	want := min(int64(batchRows), it.rowsLeft)
	if cap(it.keys) < int(want) {
		it.keys = make([]parquet.ByteArray, batchRows)
		it.vals = make([]parquet.ByteArray, batchRows)
		it.olds = make([]parquet.ByteArray, batchRows)
		it.commits = make([]int64, batchRows)
		it.starts = make([]int64, batchRows)
		it.ops = make([]int32, batchRows)
		it.defVals = make([]int16, batchRows)
		it.defOlds = make([]int16, batchRows)
	}
	type result struct {
		levels int64
		err    error
	}
	var res [numCols]result
	res[colKey].levels, _, res[colKey].err = it.keyR.ReadBatch(want, it.keys[:want], nil, nil)
	res[colCommitTS].levels, _, res[colCommitTS].err = it.commitR.ReadBatch(want, it.commits[:want], nil, nil)
	res[colStartTS].levels, _, res[colStartTS].err = it.startR.ReadBatch(want, it.starts[:want], nil, nil)
	res[colOp].levels, _, res[colOp].err = it.opR.ReadBatch(want, it.ops[:want], nil, nil)
	var nv, no int
	res[colValue].levels, nv, res[colValue].err = it.valR.ReadBatch(want, it.vals[:want], it.defVals[:want], nil)
	res[colOldValue].levels, no, res[colOldValue].err = it.oldR.ReadBatch(want, it.olds[:want], it.defOlds[:want], nil)
	for c, r := range res {
		if r.err != nil {
			return corruptf("decode column %s: %v", columns[c].name, r.err)
		}
		if r.levels != want {
			return corruptf("column %s: %d of %d rows", columns[c].name, r.levels, want)
		}
	}
	var dv, do int
	for i := 0; i < int(want); i++ {
		dv += int(it.defVals[i])
		do += int(it.defOlds[i])
	}
	if dv != nv || do != no {
		return corruptf("definition levels disagree with values")
	}
	it.rowsLeft -= want
	it.n = int(want)
	return nil
}

// window serves a file's reads from one verified row group held in memory;
// reads outside it fail.
type window struct {
	off  int64
	buf  []byte
	size int64
}

func (w *window) ReadAt(p []byte, off int64) (int, error) {
	if off < w.off || off+int64(len(p)) > w.off+int64(len(w.buf)) {
		return 0, corruptf("read [%d, +%d) outside row group [%d, +%d)", off, len(p), w.off, len(w.buf))
	}
	return copy(p, w.buf[off-w.off:]), nil
}

func (w *window) Seek(offset int64, whence int) (int64, error) {
	if whence == io.SeekEnd && offset == 0 {
		return w.size, nil
	}
	return 0, errors.New("logfile: window: unsupported seek")
}

func (w *window) Read([]byte) (int, error) { return 0, errors.New("logfile: window: unsupported read") }

func (it *iter) openGroup(g int) error {
	rg := it.rd.groups[g]
	buf := make([]byte, rg.length)
	if err := readFull(it.rd.r, buf, rg.off); err != nil {
		return fmt.Errorf("read row group %d: %w", g, err)
	}
	if c := crc32.Checksum(buf, castagnoli); c != rg.crc {
		return corruptf("row group %d: CRC %08x, want %08x", g, c, rg.crc)
	}
	props := parquet.NewReaderProperties(memory.NewGoAllocator())
	win := &window{off: rg.off, buf: buf, size: it.rd.size}
	// The column readers copy their chunks out of the window when they are
	// created; drop it then so it is not held twice.
	defer func() { win.buf = nil }()
	fr, err := file.NewParquetReader(win,
		file.WithMetadata(it.rd.md), file.WithReadProps(props))
	if err != nil {
		return corruptf("row group %d: %v", g, err)
	}
	rgr := fr.RowGroup(g)
	var crs [numCols]file.ColumnChunkReader
	for c := range crs {
		if crs[c], err = rgr.Column(c); err != nil {
			return corruptf("row group %d column %s: %v", g, columns[c].name, err)
		}
	}
	var ok [numCols]bool
	it.keyR, ok[0] = crs[colKey].(*file.ByteArrayColumnChunkReader)
	it.commitR, ok[1] = crs[colCommitTS].(*file.Int64ColumnChunkReader)
	it.startR, ok[2] = crs[colStartTS].(*file.Int64ColumnChunkReader)
	it.opR, ok[3] = crs[colOp].(*file.Int32ColumnChunkReader)
	it.valR, ok[4] = crs[colValue].(*file.ByteArrayColumnChunkReader)
	it.oldR, ok[5] = crs[colOldValue].(*file.ByteArrayColumnChunkReader)
	for c, o := range ok {
		if !o {
			return corruptf("row group %d column %s: unexpected reader %T", g, columns[c].name, crs[c])
		}
	}
	it.rowsLeft = rg.rows
	return nil
}

var _ Iterator = (*iter)(nil)
