// Package logfile is the log data file format of pitr, the storage layout
// of a task (layout.go) and the codecs of the small durable objects
// (codec.go). This comment is the format's specification; the code follows
// it, and testdata/v1.parquet is the checked-in fixture of version 1.
//
// # Data file, format version 1
//
// A data file is a standard Parquet file (readable by DuckDB, Spark, pyarrow)
// holding one row per committed change, sorted by (key ASC, commit_ts DESC)
// across the whole file; rows equal on (key, commit_ts) are duplicates of one
// change and may repeat (DESIGN I5).
//
//	message schema {
//	  required binary key;        // raw user key (no logical type: a BLOB)
//	  required int64  commit_ts;  // TSO; DELTA_BINARY_PACKED
//	  required int64  start_ts;   // TSO; DELTA_BINARY_PACKED
//	  required int32  op;         // 1 put, 2 delete (never renumbered)
//	  optional binary value;      // null exactly for deletes; may be empty
//	  optional binary old_value;  // null when the change carried none
//	}
//
// Timestamps are TSOs (< 2^63), stored as signed INT64. All pages are zstd
// (or uncompressed, for local spill runs), data page v1, PLAIN encoding
// except the timestamps, no dictionaries. Min/max statistics are written for
// key (keys up to 64 KiB), commit_ts, start_ts and op, per row group and
// per page, so engines prune by key and time; value and old_value carry
// none.
//
// A row group holds about WriterOptions.RowGroupBytes (default 8 MiB) of
// uncompressed data and is the unit of a range read: a reader fetches one
// row group with one read.
//
//	offset 0                "PAR1"
//	4                       row group 0: column chunks key, commit_ts, start_ts, op, value, old_value
//	...                     row group 1..n-1, contiguous, in key order
//	footer_start            FileMetaData (thrift compact)
//	size-8                  footer length (uint32 little endian), "PAR1"
//
// The footer's key-value metadata:
//
//	pitr.format_version  "1"; a reader refuses a larger number (ErrFormat)
//	pitr.sort_order      "key ASC, commit_ts DESC"
//	pitr.row_groups      "<off>:<len>:<crc32c hex>,..." one entry per row group:
//	                     its byte range (row groups are contiguous from
//	                     offset 4 to footer_start) and the CRC-32C
//	                     (Castagnoli) of those bytes
//	pitr.footer_crc32c   8 hex digits, the last entry: CRC-32C of the thrift
//	                     footer bytes with these 8 digits replaced by "00000000"
//
// Together the two checksums cover every byte of the file: a reader checks
// the footer (before parsing it) when it opens a file and each row group
// before decoding it, so corruption is ErrCorrupt, never wrong rows or a
// decoder fed garbage. The meta's sha256 covers the
// whole file too and restore verifies it first; the CRCs make range reads
// (which cannot check a whole-file hash) safe as well.
//
// Keys are compared as unsigned bytes. The file-level bounds (min/max key,
// commit_ts, start_ts, rows, logical bytes) live in the meta entry
// (pitrpb.DataFile), computed by the Writer as Stats.
//
// # Versioning
//
// Versions move forward only. A change to anything above (columns, their
// types or meaning, encodings a v1 reader cannot decode, the metadata
// entries) is a new version with a new fixture; readers keep reading every
// older version.
package logfile
