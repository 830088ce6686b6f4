// On-disk format (format version 1)
//
// With a directory, the engine keeps its state in memory and makes it durable
// with a write-ahead log plus a checkpoint:
//
//	<dir>/mvcc.checkpoint            full state as of the start of segment F
//	<dir>/wal-<seg:020d>.log         log segments F, F+1, ... (zero-padded)
//	<dir>/mvcc.checkpoint.tmp        a checkpoint being written (ignored, removed)
//
// Recovery loads the checkpoint (none: empty state, F = 0), replays every
// segment ≥ F in order, truncates a torn tail of the last segment (a frame
// that is short or fails its checksum: the process died mid-write), deletes
// segments < F left over from a crash, and starts a new segment. Segments
// are never appended to after a restart.
//
// Frame (both files):
//
//	+----------------+----------------+------------------+
//	| len uint32 LE  | crc uint32 LE  | payload (len B)  |
//	+----------------+----------------+------------------+
//	crc = CRC-32C (Castagnoli) of payload
//
// Payload = one batch: uvarint count, then count mutations. A log frame is
// one applied Command (or one GC/ingest batch), written with a single write
// call; the log is fsynced every 100 ms and on rotation and Close.
//
// Mutation:
//
//	op byte (1 put, 2 delete) | cf byte (1 default, 2 lock, 3 write)
//	key: uvarint len + bytes (raw user key)
//	ts:  uvarint (default: start_ts, write: commit_ts, lock: 0)
//	put only, by cf:
//	  default: value as uvarint len + bytes
//	  lock:    type byte ('P','D','L','S') | primary (len+bytes)
//	           | uvarints start_ts, ttl, for_update_ts, min_commit_ts,
//	             txn_size, txn_source
//	           | flags byte (bit0 use_async_commit, bit1 has short value)
//	           | [short value (len+bytes) if bit1]
//	           | uvarint n secondaries, n × (len+bytes)
//	  write:   type byte ('P','D','L','R') | uvarint start_ts
//	           | uvarint txn_source
//	           | flags byte (bit0 has short value, bit1 overlapped rollback)
//	           | [short value (len+bytes) if bit0]
//
// A protected rollback is a Rollback write whose short value is "p", as in
// TiKV. Old values are not persisted: observers get them only live.
//
// Checkpoint file (format version 2; version 1 lacks the applied index,
// which then counts from 0, and is still read):
//
//	"PITRMVC2" (8 bytes, the format version is the last byte)
//	| first segment F uint64 LE | max_ts uint64 LE | applied index uint64 LE
//	| frames of put mutations (locks, then default, then write CF; ≤1024
//	  per frame) | terminator frame with len 0
//
// A checkpoint is written from a copy-on-write clone after rotating the log
// to segment F, as temp file + fsync + rename + fsync(dir); then segments
// < F are deleted. The engine checkpoints when the log since the last
// checkpoint exceeds DefaultCheckpointBytes, and on Close. The applied
// index (Engine.AppliedIndex) counts every batch applied since the engine
// was created: the checkpoint stores it as of the start of segment F and
// replay adds one per frame.
//
// Recovery requires the segments from F on to be contiguous: a missing
// segment is an error (errWALGap), never skipped.
//
// Live copies (volume snapshots). Files in the directory are only ever
// appended to (the open segment) or replaced whole by rename (the
// checkpoint); a segment is deleted only after the checkpoint that no
// longer needs it is durable; a closed segment never changes again. So a
// copy made while the engine runs by listing the directory, then
// hard-linking each listed file and recording its size, opens as a crash
// state (a prefix of the applied batches) provided the checkpoint is linked
// after the segments (reverse name order does it; a listed file that has
// vanished is skipped): only the last listed segment can still grow, and a
// segment deleted before its link is covered by the newer checkpoint the
// copy then takes. Linked checkpoint first, a copy can miss a segment a
// later checkpoint deleted; it then fails to open with errWALGap.

package mvcc
