// Package agent is the sidecar beside each TiKV store: it captures every
// committed change of the store's regions from the change stream
// (cdcpb.ChangeData/EventFeed) and hands it to package flush, which stores
// it as Parquet files and one meta per flush (DESIGN.md §3).
//
// It talks to the cluster only through public protocols: the Go PD client
// (store id, regions, TSO), PD's etcd (tasks, global checkpoint, its own
// registration) and EventFeed on the local TiKV.
//
// # Pieces
//
//	Agent     New/Run/Drain/Close; store id, etcd registration under a lease,
//	          task watch, gRPC Agent service, /metrics and /healthz
//	runner    one per RUNNING task: opens storage, restarts failed captures,
//	          remembers what this agent flushed (spanMap) across restarts
//	capture   one EventFeed stream, the region subscriptions on it, the
//	          region loop (PD) and the flush loop
//	matcher   one per subscription: PREWRITE/COMMIT/COMMITTED/ROLLBACK →
//	          committed changes (TIKV-PROTOCOLS.md §1.5)
//
// # Regions and subscriptions
//
// Every RegionInterval (and at once after a subscription error or a new
// stream) the capture scans PD over the task ranges and keeps the regions
// whose leader is on this store, clipped to the ranges. A region's state
// goes idle → pending (Register sent) → normal (INITIALIZED received) →
// idle (an error ended it: NotLeader, EpochNotMatch, RegionNotFound re-read
// PD at once; ServerIsBusy and Congested retry after a growing delay; a
// broken stream ends all of them). One request id per subscription; one
// subscription per region on a stream at a time, so the region ids of a
// store-level ResolvedTs name their subscriptions. A region PD no longer
// shows here for two scans in a row is deregistered.
//
// # Checkpoints and coverage (the honesty rule)
//
// A region's checkpoint ("from") is a ts such that storage holds every
// change committed at or before it inside the region's range:
//
//   - At subscription, checkpoint_ts = max(task start_ts, the global
//     checkpoint in etcd, the lowest ts this agent itself has stored for the
//     whole of the range). The last one covers re-subscriptions (leader back,
//     broken stream, protocol error) and split halves of a region flushed
//     before the split; it only counts what a stored meta proves for every
//     key of the range.
//   - The incremental scan then delivers every change committed after
//     checkpoint_ts, so at a flush cut the buffer holds all changes in
//     (from, resolved] and the meta claims exactly that interval
//     (RegionCoverage). After the meta is stored, from = resolved.
//   - Regions not initialized are not in a meta; GetProgress reports them at
//     their subscription checkpoint with a reason, which pins the global
//     checkpoint, as it must.
//
// Rows already buffered when a subscription ends stay buffered; the next
// subscription may deliver them again (duplicates are allowed, I5).
//
// # Backpressure
//
// The stream reader hands rows to the flusher before it reads the next
// message. When the flusher's memory and spill budgets are full, Add blocks,
// the reader stops, and TiKV buffers (its sink quota then answers with
// Congested, retried later). Nothing is dropped.
//
// Pending prewrites (values of transactions not yet committed) live in the
// matchers, outside the flusher's budgets, counted against PrewriteBudget
// (all tasks of the agent). Over it, the region holding the most drops them
// and is subscribed again from its checkpoint: the incremental scan sends
// the locks that are still open again, and what committed meanwhile as
// COMMITTED rows. A region whose rescan alone brings back more than the
// budget (open transactions larger than it) is kept over the budget and
// reported by GetProgress and pitr_agent_pending_prewrite_over_budget_bytes
// until they end: its checkpoint is pinned by those locks anyway. One region
// per agent is kept at a time; others over the budget are released again
// with a growing delay. So memory for prewrites stays within the budget
// plus one row plus the kept region's open transactions (see
// enforcePrewriteBudgetLocked).
//
// # Restarts
//
// A killed agent loses its buffer and its own flushed-range memory; the
// next one subscribes every region from the global checkpoint (or start_ts)
// and captures the lost rows again. A graceful stop (Drain, which `pitr
// agent` runs on SIGINT/SIGTERM) flushes once more first.
package agent
