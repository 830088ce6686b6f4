// Package flush turns the committed changes an agent captures into sorted
// Parquet data files in storage, and commits them with one meta per store per
// flush (DESIGN §1, §3 "Flush cut" and "Backpressure", §4).
//
// # Life of a row
//
//	Add ──► current generation ──(over half the memory budget)──► spill run on local disk
//	                │
//	Flush (cut) ────┘ the generation is taken whole; later Adds start a new one
//	                ▼
//	sort memory rows ─┐
//	spill runs ───────┴─► merge.Merge (k-way, dedupe) ─► logfile.Writer ─► io.Pipe ─► Uploader.PutReader
//	                                                    cut a new file at FileTarget
//	                ▼
//	every data file stored ─► meta/<flush_ts>-<store_id>.meta (the commit point, I5)
//
// A Flush that fails gives its generation back: its rows (memory and spill
// runs) join the current generation and go out with the next Flush (I1).
// Data files it may already have stored are orphans that no meta references;
// readers ignore them (I5). Data file names carry a random id, so a file is
// never overwritten. A crash loses the buffered rows, which is safe: region
// checkpoints advance only when the meta holding their data is stored, so
// the agent captures them again after a restart.
//
// # Memory accounting
//
// A row is accounted as len(Key)+len(Value)+len(OldValue) plus a fixed
// per-row overhead (the Row struct and the pointer the sort needs), see
// memSize. Lengths, not capacities, are counted: callers should not hand in
// rows whose slices pin much larger buffers.
//
// The current generation keeps at most MemoryBudget/2 in memory; above it,
// it is sorted and written to Dir as a spill run. The generation a running
// Flush took is at most the other half, so rows in memory stay within
// MemoryBudget while Adds keep flowing during a flush. (Exceptions, both
// bounded by 2×: a single Add larger than half the budget is admitted into
// an empty generation, and a failed Flush hands its rows back on top of the
// current ones, which the next Add spills.) Spill runs are bounded by
// SpillBudget; when the next run would not fit, Add blocks until a Flush
// frees space or the caller's context ends. Add never drops rows: it either
// takes the whole batch or returns an error and takes nothing.
//
// # Spill run format (local, version 1)
//
// A spill run is one sorted run of rows (key ASC, commit_ts DESC), written
// to Dir/run-<seq:016x>.spill. It is scratch, not durable state: New deletes
// every *.spill file left in Dir, because their rows were never covered by
// a meta and the agent captures them again. That is also why runs are not
// fsynced or renamed into place (a durable write would only slow spilling
// down): a run is read back only by the process that wrote it, and a torn
// or bit-flipped run is caught by the per-record CRC and the trailer, which
// fails the Flush instead of losing rows silently.
//
// All integers little endian.
//
//	file    = magic record* trailer
//	magic   = "PITRRUN1"                                          8 bytes
//	record  = keyLen:u32 valueLen:u32 oldLen:u32                  12 bytes
//	          commitTS:u64 startTS:u64 op:i32 flags:u8            21 bytes
//	          headerCRC:u32 (CRC-32C of the 33 bytes above: lengths are
//	                         trusted only after it, before allocating)
//	          key value oldValue                                  keyLen+valueLen+oldLen bytes
//	          crc:u32  (CRC-32C of every preceding byte of the record)
//	flags   = bit 0: Value != nil; bit 1: HasOldValue; bit 2: OldValue != nil
//	trailer = 0xFFFFFFFF:u32 rows:u64 crc:u32 (CRC-32C of the first 12 bytes)
//
// A run's size is known exactly before it is written (runSize), so the
// spill budget is reserved up front, never overshot.
//
// # Concurrency
//
// Add, Buffered, Stats and Flush are safe for concurrent use. Flushes run
// one at a time. Add may block (backpressure), so the caller must be able to
// call Flush from another goroutine than the one blocked in Add, or cut a
// flush itself when Buffered reaches FileTarget. Buffered is logical
// (uncompressed) bytes; Stats.FileRatio converts it to stored bytes.
//
// # Throughput
//
// A flush is one sequential stream: merge, Parquet encoding (zstd, the bulk
// of the CPU), sha256, and the upload in its own goroutine behind an
// io.Pipe, so a file is stored while it is written and the next one starts
// as soon as it is closed. Files are not encoded in parallel because a file
// is cut on its exact encoded size.
package flush
