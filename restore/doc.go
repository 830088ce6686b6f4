// Package restore rebuilds a cluster as it was at a past timestamp T from a
// pitr log backup (DESIGN §6), and verifies a backup offline. It works with
// the source cluster gone: it reads only the storage root and talks only to
// the target cluster (it never imports agent or coordinator).
//
// # Restore
//
//	Load      pitr.lock, task.pb, checkpoint/global, meta/*.meta      (ErrNotBackup, ErrCorrupt, ErrFormat)
//	snapshots snapshot/<B>/ under the root (or --snapshot's root):     (ErrCorrupt, ErrFormat, ErrNotBackup)
//	          backupmeta checksummed, its checksums tiling its ranges
//	NewPlan   T in [start_ts, checkpoint]; base = the newest finished   (ErrOutOfRange, ErrNoBase, ErrNotBackup)
//	          snapshot with start_ts ≤ B ≤ T covering the task ranges,
//	          of the task's cluster; none if started_empty and none fits;
//	          T before the first snapshot of a task not started empty is
//	          out of range (base.go)
//	          coverage of (B, T] has no hole; the base's files, and log  (ErrMissing)
//	          files with min_commit_ts ≤ T and max_commit_ts > B
//	          units = task ranges cut at the source regions' boundaries
//	          and the base's checksum ranges
//	verify    every file the remaining units need: exists, size, sha256 (ErrMissing, ErrCorrupt)
//	target    TSO past T; no key in the task ranges unless resuming      (ErrTargetNotEmpty)
//	          or Force; no change stream registered on it                (ErrTargetInUse)
//	prepare   pause PD's schedulers and merges (TTL + keepalive), pre-split
//	          and scatter at the source's region boundaries
//	gc hold   gc.ratio-threshold = -1 on every TiKV (status API), kept    (ErrUnavailable)
//	          while writing, set back on every return (gc.go)
//	write     jobs (runs of adjacent units, big enough that a file's row
//	          groups are decoded about once) swept by Concurrency/4 readers:
//	          merge.Merge over the files meeting the job (row groups
//	          pruned by key), keep commit_ts ≤ T (deletes too), cut chunks
//	          at target region boundaries and ChunkBytes, never inside
//	          one key's versions; Concurrency
//	          writers: import_sstpb Write to every peer (SSTMeta with the
//	          encoded inclusive key range, API V1) + MultiIngest at the
//	          leader, every store held in import mode meanwhile
//	          (importmode.go); ServerIsBusy retries the ingest alone (up to
//	          BusyTimeout), other region errors refresh the region from PD
//	          and write again (MaxAttempts, with backoff)
//	progress  a unit is recorded done (progress file) once the chunk
//	          holding its last version is ingested; a rerun skips it
//	checksum  a single-pass sweep sums what a read at T returns in its    (ErrChecksum)
//	          range (recorded in the progress file); after the last
//	          ingest the target's coprocessor checksum of each range at
//	          its TSO must match (checksum.go; SkipChecksum: none)
//
// Nothing is written to the target before the plan, the file checks and
// the target checks pass, so every refusal leaves the target untouched
// (I7); an error once a run has written is a *WrittenError, which says how
// far the restore got. After the checks, data files are still read through their
// per-row-group CRC-32C, so a file that changes after its sha256 check is
// ErrCorrupt, never wrong rows.
//
// Exactness (I4): every version with commit_ts in (B, T] in the task ranges
// is in a selected file (I1 + the coverage check), and is written with its
// own commit_ts; versions after T are not written. Over a base, the
// snapshot's rows (one Put per key visible at B, at commit_ts B) stand for
// everything up to B, and the log's rows at or before B are dropped. A snapshot read at T on the
// target then sees, per key, the newest version ≤ T, as the source did. The
// same version written twice (duplicates across files, or a unit redone
// after a crash) is idempotent.
//
// # What restore does to the target, and undoes
//
// After the checks and before the first write (prepare.go):
//   - it refuses a target on which a change stream is registered in PD's
//     etcd: a BR log backup (/tidb/br-stream/info/), a TiCDC changefeed
//     (.../changefeed/info/ under /tidb/cdc/) or a pitr task
//     (/pitr/v1/task/). Ingested SSTs never reach such a stream, so it
//     would silently miss the restored data (ErrTargetInUse, a kind of
//     ErrTargetNotEmpty; Force does not override it);
//   - it pauses PD's balance-leader, balance-region and balance-hot-region
//     schedulers (and shuffle-*, if present) for PrepareOptions.PauseTTL
//     (default 5 min), and sets max-merge-region-size,
//     max-merge-region-keys and merge-schedule-limit to 0 as PD temporary
//     config with the same TTL, renewing both every TTL/3; so PD neither
//     merges nor moves the regions being written (BR's
//     RemoveSchedulersWithConfig does the same);
//   - it splits the target at the source's region boundaries inside the
//     restore ranges (from the metas' coverage, at most MaxSplitKeys) with
//     PD's SplitRegions, and scatters the new regions. A failed split or
//     scatter only costs speed.
//
// At the end, on success or failure, it resumes the schedulers (delay 0)
// and deletes the temporary config (ttlSecond=0 with the original values),
// so PD is as before. A restore that dies leaves nothing permanent: the
// pauses and the temporary config lapse within PauseTTL. The pre-split
// regions stay; PD merges the empty ones after its split-merge-interval.
//
// # Write batching
//
// import_sstpb's WriteBatch carries one commit_ts for all its pairs. A
// chunk goes out in file order (key ASC, commit_ts DESC) as one WriteBatch
// per run of consecutive rows with the same commit_ts (split at 1 MiB):
// every row keeps its commit_ts, and the stream stays in the (key, ts)
// order a real TiKV's SST writer requires (the playground accepts any
// order; grouping all rows of a commit_ts across the chunk would break on
// TiKV). Log data seldom has two adjacent rows of one transaction, so most
// batches hold one pair; their messages are allocated in slabs.
//
// # Memory
//
// Options.MemoryBudget (default 1 GiB) bounds what restore holds however
// large the log is: Concurrency+readers chunk buffers (ChunkBytes each,
// accounted three times for their protobuf copies; readers wait for a free
// one) and, per reader, the open iterators of one pass, each about two
// encoded row groups. When the files meeting a job do not fit, the sweep
// takes several passes over ascending commit-time windows, each pass
// reading the files whose commit range meets its window and ingesting only
// the versions inside it, after the previous pass is fully ingested. So no
// version of a key reaches the target after a newer one, and a GC on the
// target (which the hold should stop, but a store restart can let run for
// a while) sees a prefix of each key's history (gc.go). A file spanning
// several windows is read once per window.
//
// # Verify
//
// Verify checks the same offline, without a cluster: the metas parse, the
// restore point is in range, the coverage rectangles [start_key, end_key) ×
// (from_ts, to_ts] of all metas cover task ranges × (start_ts, T] (one
// sweep over the key axis with a segment tree over time, O(n log n)), and
// every referenced file exists with its size and sha256. It reports the
// first problem.
package restore
