package snapshot

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/tikv/client-go/v2/tikv"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// Defaults of ScanOptions.
const (
	DefaultFileTarget = flush.DefaultFileTarget
	// DefaultBatchSize is the keys one KvScan returns (client-go's default
	// is 256; larger batches cost fewer round trips per byte).
	DefaultBatchSize = 1024
	// prefetch is the scanned batches buffered ahead of the file writer.
	prefetch = 8
)

// ScanOptions describe one range to back up.
type ScanOptions struct {
	// Root is the snapshot root's path in the storage ("" or ".../").
	Root     string
	BackupTS uint64
	Range    keyspace.Range
	// FileTarget: a data file is cut once it reaches this size
	// (DefaultFileTarget).
	FileTarget int64
	// BatchSize is the keys per KvScan (DefaultBatchSize).
	BatchSize int
	// Scanned, when set, counts the logical bytes (keys and values) read.
	Scanned *atomic.Int64
	// CompressionLevel is the files' zstd level (DefaultCompressionLevel).
	CompressionLevel int
}

// DefaultCompressionLevel is zstd's fastest level: a snapshot is written
// in one pass at the speed of a scan, and zstd's default level costs about
// twice the CPU of the fastest for a few percent of size.
const DefaultCompressionLevel = 1

// Scanned is what ScanRange stored.
type Scanned struct {
	// Files are the data files, in key order, with paths relative to the
	// snapshot root.
	Files []*pitrpb.DataFile
	// Sum is the checksum of the rows written that lie inside
	// checksum.Bounded(Range): what the cluster's checksum of the range at
	// the backup ts must equal.
	Sum          checksum.Sum
	Rows         int64
	LogicalBytes int64
}

// ScanRange reads o.Range at o.BackupTS through store (client-go's
// snapshot reads: each region's leader answers, region errors and locks
// are retried and resolved there) and stores the keys it finds as data
// files of the log schema: one Put row per key, commit_ts = start_ts =
// backup ts (KvScan returns values, not versions; a restore to any T ≥
// backup ts reads the same). Files go to up under o.Root + files/. On
// error, files already stored are orphans that no backupmeta references.
func ScanRange(ctx context.Context, store *tikv.KVStore, up flush.Uploader, o ScanOptions) (*Scanned, error) {
	if o.FileTarget <= 0 {
		o.FileTarget = DefaultFileTarget
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.CompressionLevel == 0 {
		o.CompressionLevel = DefaultCompressionLevel
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	it := newScanIter(ctx, store, o)
	files, err := flush.WriteFiles(ctx, prefixed{up, o.Root}, it, flush.FileOptions{
		FileTarget:        o.FileTarget,
		UploadConcurrency: 2,
		Writer:            logfile.WriterOptions{RowGroupBytes: max(min(logfile.DefaultRowGroupBytes, o.FileTarget/8), 1), CompressionLevel: o.CompressionLevel},
		Path:              FilePath,
	})
	_ = it.Close()     // the reader has ended once Close returns
	if it.err != nil { // the scan's own error says more than the writer's echo of it
		return nil, it.err
	}
	if err != nil {
		return nil, err
	}
	return &Scanned{Files: files, Sum: it.sum, Rows: it.rows, LogicalBytes: it.logical}, nil
}

// prefixed stores keys under a root.
type prefixed struct {
	flush.Uploader
	root string
}

func (p prefixed) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	return p.Uploader.PutReader(ctx, p.root+key, r, size)
}

// scanIter is a logfile.Iterator over a client-go snapshot scan, read
// ahead by a goroutine so that the next KvScan runs while the current
// batch is encoded.
type scanIter struct {
	batches chan []logfile.Row
	done    chan struct{}
	stop    context.CancelFunc
	closing atomic.Bool // Close was called: the reader's cancellation is not an error
	err     error       // set by the reader before it closes batches
	cur     []logfile.Row
	i       int

	// Written only by the reader goroutine; read after batches is closed.
	sum     checksum.Sum
	rows    int64
	logical int64
}

func newScanIter(ctx context.Context, store *tikv.KVStore, o ScanOptions) *scanIter {
	ctx, stop := context.WithCancel(ctx)
	it := &scanIter{batches: make(chan []logfile.Row, prefetch), done: make(chan struct{}), stop: stop}
	go it.read(ctx, store, o)
	return it
}

func (it *scanIter) read(ctx context.Context, store *tikv.KVStore, o ScanOptions) {
	defer close(it.batches)
	bounds := checksum.Bounded(o.Range)
	snap := store.GetSnapshot(o.BackupTS)
	snap.SetScanBatchSize(o.BatchSize)
	snap.SetNotFillCache(true)
	start := o.Range.Start
	if len(start) == 0 {
		start = []byte{} // client-go scans from the first key
	}
	var end []byte
	if len(o.Range.End) > 0 {
		end = o.Range.End
	}
	si, err := snap.Iter(start, end)
	if err != nil {
		it.err = fmt.Errorf("scan %s at %d: %w", o.Range, o.BackupTS, err)
		return
	}
	defer si.Close()
	batch := make([]logfile.Row, 0, o.BatchSize)
	send := func() bool {
		if len(batch) == 0 {
			return true
		}
		select {
		case it.batches <- batch:
			batch = make([]logfile.Row, 0, o.BatchSize)
			return true
		case <-ctx.Done():
			it.cancelled(ctx)
			return false
		}
	}
	for si.Valid() {
		if ctx.Err() != nil {
			it.cancelled(ctx)
			return
		}
		// The iterator's key and value belong to its response, which a
		// later batch does not reuse: they can be kept as they are.
		k, v := si.Key(), si.Value()
		batch = append(batch, logfile.Row{Key: k, Value: v, CommitTS: o.BackupTS, StartTS: o.BackupTS, Op: logfile.OpPut})
		if checksum.InBounds(bounds, k) {
			it.sum.Add(k, v)
		}
		it.rows++
		n := int64(len(k) + len(v))
		it.logical += n
		if o.Scanned != nil {
			o.Scanned.Add(n)
		}
		if len(batch) == cap(batch) && !send() {
			return
		}
		if err := si.Next(); err != nil {
			it.err = fmt.Errorf("scan %s at %d: %w", o.Range, o.BackupTS, err)
			return
		}
	}
	send()
}

func (it *scanIter) cancelled(ctx context.Context) {
	if !it.closing.Load() {
		it.err = context.Cause(ctx)
	}
}

func (it *scanIter) Next() bool {
	it.i++
	for it.i >= len(it.cur) {
		b, ok := <-it.batches
		if !ok {
			return false
		}
		it.cur, it.i = b, 0
	}
	return true
}

func (it *scanIter) Row() *logfile.Row { return &it.cur[it.i] }

// Err is the scan's error; valid once Next returned false (the reader
// has closed batches then).
func (it *scanIter) Err() error { return it.err }

// Close stops the reader and waits for it.
func (it *scanIter) Close() error {
	it.closing.Store(true)
	it.stop()
	for range it.batches { //nolint:revive // drain so the reader ends
	}
	return nil
}
