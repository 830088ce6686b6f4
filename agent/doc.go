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
// Every RegionInterval (10s by default), and at once on a change signal
// (NotLeader, EpochNotMatch, RegionNotFound, a broken stream), the capture
// scans PD over the task ranges and keeps the regions whose leader is on
// this store, clipped to the ranges; a region whose leader moves here is
// found by the next periodic scan. A region's state goes idle → pending
// (Register sent) → normal (INITIALIZED received) → idle (an error ended
// it; ServerIsBusy, Congested and DuplicateRequest retry after a delay,
// without asking PD; a broken stream ends all of them). One request id per
// subscription; one subscription per region on a stream at a time, so the
// region ids of a store-level ResolvedTs name their subscriptions (and
// TiKV < 7.3, which keys a stream's subscriptions by region, accepts
// them).
//
// PD alone never ends a subscription (TIKV-PROTOCOLS.md §8.1, §8.12): a
// subscription is matched to PD's region by id, epoch version and range
// (conf_ver changes with every peer move and TiKV CDC ignores it); a region
// PD shows elsewhere or changed stays subscribed until TiKV itself says
// NotLeader, EpochNotMatch or RegionNotFound; a region without a leader in
// PD (after a PD restart, until the leaders heartbeat) is "unknown", not
// "elsewhere". When the agent must end a subscription itself (a protocol
// error, a full flusher) it sends Deregister to TiKV ≥ 7.3 and otherwise
// closes the stream and opens a new one, subscribing the other regions
// again from their checkpoints: before 7.3 every request is a Register, so
// a Deregister would only be answered DuplicateRequest. The version is the
// store's metapb.Store.Version in PD, read before every stream.
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
// message, but it never stops reading for long: TiKV does not buffer for
// one slow client. Its sink memory quota (cdc.sink-memory-quota, 512 MiB)
// is shared by every connection of the store, and an overflow stops the
// whole region delegate, so every subscriber of the region, TiCDC
// included, gets Congested and rescans (TIKV-PROTOCOLS.md §8.4). When the
// flusher's memory and spill budgets are full and Add blocks longer than
// BlockedGrace, the capture releases the regions whose rows wait (their
// rows are dropped; Deregister, or a new stream below TiKV 7.3), keeps
// reading, and subscribes nothing new. A probe keeps trying to add the
// refused rows; once it succeeds there is room, and the released regions
// are subscribed again from their checkpoints, whose incremental scans
// send everything after them again. Nothing is lost.
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
