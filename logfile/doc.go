// Package logfile is the log data file format of pitr, the storage layout
// of a task (layout.go) and the codecs of the small durable objects
// (codec.go). This comment is the format's specification; the code follows
// it. testdata/v1.parquet is the checked-in fixture of data format 1,
// testdata/objects/ those of every version of the small objects.
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
// # Small durable objects (meta, task.pb, pitr.lock, checkpoint/global)
//
// Each is one protobuf message of package pitrpb (Meta, TaskInfo, Lock,
// GlobalCheckpoint), wrapped since format version 2 in a checksummed frame
// so that a reader verifies every byte before it trusts any field (DESIGN
// I9). The frame is itself a valid protobuf message:
//
//	offset     bytes            field
//	0          08 02            field 1 varint: format_version = 2
//	2          10 <kind>        field 2 varint: 1 meta, 2 task info, 3 lock,
//	                            4 global checkpoint (one byte: kind < 128)
//	4          1a <len varint>  field 3 bytes: the payload, the message
//	4+1+v      payload          encoded deterministically, its own
//	                            format_version = 2
//	n-5        25               field 4 fixed32:
//	n-4        <crc32c LE>      CRC-32C (Castagnoli) of bytes [0, n-4)
//
// A meta of format version 3 is the same frame with version byte 03: its
// coverage continues the previous meta of its chain (coverage.go). Its
// fixture is testdata/objects/meta-v3.meta; a pitr that reads only version
// 2 refuses it as too new rather than taking its short coverage as all.
//
// Rules for readers, in this order:
//
//  1. An object beginning 08 02 or with a larger varint version (anything
//     but 08 00 and 08 01) is framed. Its last five bytes must be 25 and a
//     CRC-32C of everything before them; this trailer is permanent, every
//     later frame version keeps it, so the checksum is checked before the
//     version is believed. A mismatch is ErrCorrupt. Only then is a version
//     above 2 (above 3 for a meta) ErrFormat ("upgrade pitr"), and then the
//     layout above must hold exactly (kind as the reader expects, length to
//     the trailer, payload format_version equal to the frame's), or
//     ErrCorrupt.
//  2. An object beginning 08 01 is a legacy version 1 object: a bare
//     message with no checksum, as written before version 2 (every writer
//     of version 1 marshalled deterministically, so field 1 always came
//     first). It is decoded and sanity-checked as before, and refused
//     (ErrCorrupt) if it holds a field this build does not know: version 1
//     writers knew no field that this build lacks, so an unknown field is
//     damage. Otherwise it has no protection against bit rot.
//     testdata/objects/*-v1* are its fixtures.
//  3. Anything else is ErrCorrupt.
//
// Why a flipped bit can never be taken for valid data: CRC-32C detects
// every single-bit error (and every burst up to 32 bits) at these sizes,
// and the trailer's position depends only on the object's length, which a
// flip does not change; so within a framed object every flip of a payload,
// length, kind, trailer or version byte fails rule 1. Bytes 0-1 of a frame
// (08 02) are two flipped bits away from the legacy start (08 01) and any
// flip of byte 0 leaves rule 3, so no single flip turns a framed object
// into an acceptable legacy one; and even those two flips are refused,
// because the frame's payload (field 3, bytes) and crc32c (field 4,
// fixed32) have wire types that fields 3 and 4 of the four messages do not
// have, so they parse as unknown fields. A legacy object stays unprotected
// beyond these checks until it is rewritten (checkpoint/global is, on the
// next write; metas never are).
//
// A pitr that predates version 2 parses a frame as a message with
// format_version 2 (payload and crc32c become unknown fields, the kind at
// most a bogus field 2) and refuses it as too new, asking for an upgrade.
//
// The checksum protects against corruption, not against a writer with
// access to the storage root.
//
// # Versioning
//
// Versions move forward only. A change to anything above (columns, their
// types or meaning, encodings a v1 reader cannot decode, the metadata
// entries) is a new version with a new fixture; readers keep reading every
// older version.
package logfile
