// Package cdc is the playground store's TiKV CDC service (cdcpb.ChangeData),
// built to be indistinguishable from TiKV's on the wire. The reference is
// TIKV-PROTOCOLS.md §1 and, where that text is silent or loose, TiKV's
// components/cdc (service.rs, endpoint.rs, delegate.rs, channel.rs,
// initializer.rs).
//
// # Streams, subscriptions, features
//
// One EventFeed stream is one connection ("Conn"). It carries many
// subscriptions keyed by (request_id, region_id). The first request of a
// stream fixes its features from header.ticdc_version (semver, TiKV's strict
// parse; anything unparseable is 0.0.0): ≥ 4.0.8 gets store-level batched
// ChangeDataEvent.resolved_ts, older clients the deprecated per-region
// Event.resolved_ts; ≥ 5.3.0 has header.cluster_id checked on every Register
// (ClusterIDMismatch). EventFeedV2 is implemented: the gRPC metadata key
// "features" may name "stream-multiplexing" (resolved ts are then grouped
// per request_id); any other name fails the stream with UNIMPLEMENTED.
//
// # Versions
//
// Config.Version is the TiKV version the service behaves as (default
// 8.5.0). Before 7.3 (tikv PR #14923; checked against v7.1.0 service.rs
// and endpoint.rs) every request is a Register — there is no Deregister —,
// EventFeedV2 is UNIMPLEMENTED, and a stream holds one subscription per
// region (Conn.downstreams keyed by region id): a second Register of the
// region on the stream, under any request id, is DuplicateRequest and the
// first subscription goes on.
//
// # Register
//
// In TiKV's order: cluster id (if validated), kv_api (TxnKV and RawKV get
// Compatibility{6.2.0}: the playground is API v1), pending-scan limit
// (ServerIsBusy), region present (RegionNotFound), duplicate (request_id,
// region_id) (DuplicateRequest; the existing subscription goes on). The
// subscription then waits for one of the store's incremental-scan permits
// (cdc.incremental-scan-concurrency, 6) and "captures" the region: under the
// cluster's read lock — so no split, merge or leader move interleaves — it
// checks leadership (NotLeader with the leader hint), then the request's
// epoch version against the region (EpochNotMatch carrying the region, like
// raftstore's compare_region_epoch; conf_ver is ignored), then registers the
// engine observer and takes the snapshot in one atomic step.
//
// From that point live rows are forwarded at once, interleaved with the
// incremental scan that runs over region ∩ [start_key, end_key) of the
// snapshot: per key, the lock (PREWRITE with value and old value) then the
// Put/Delete versions with commit_ts > checkpoint_ts newest first
// (COMMITTED, old value read at commit_ts-1), then one INITIALIZED row.
// Rows are batched into Events of ≤ 32 KiB, at most 64 Events and 6 MiB per
// ChangeDataEvent, never mixed with a batched resolved ts. Once INITIALIZED
// has been handed to gRPC the subscription is Normal and takes part in
// resolved-ts advancing.
//
// # Live rows
//
// Each applied mvcc.Command is turned into rows exactly as delegate.rs
// sink_txn_put does: Put mutations only, grouped by key; lock Put (Put or
// Delete lock) → PREWRITE (value from the lock's short value or the
// default-CF Put of the same command, old value); a PUT prewrite without a
// value in the command (a lock rewritten by a heartbeat or a min_commit_ts
// push whose value lives in the default CF) is suppressed; Lock and
// Pessimistic locks are dropped; write Put Put/Delete → COMMIT (value only
// when the record carries a short value, no old value); Rollback → ROLLBACK
// (op UNKNOWN, commit_ts 0); Lock writes dropped; in a 1PC command write Puts
// become COMMITTED with value and old value. Rows outside the subscription's
// span are not sent; rows whose txn_source marks Lightning physical import
// or lossy DDL reorg are dropped, and CDC-written rows when filter_loop. Rows
// of one command are sent in key order (TiKV's order is a hash map's).
//
// # Resolved ts
//
// Every MinTSInterval the service takes a TSO and pushes the engine's
// max_ts to it (TiKV's concurrency-manager update), then waits for the
// command being applied, if any (the engine's snapshot is the barrier; it
// stands in for TiKV's in-memory locks of a 1PC/async-commit prewrite that
// read max_ts just before), then for every Normal subscription advances advanced_to
// to min(TSO, oldest tracked Put/Delete lock in its span) when that is
// larger. Locks are tracked from the snapshot (seeded while scanning, with
// the changes observed meanwhile replayed on top) and from live lock Puts,
// untracked only by the write Put of the same start_ts (a lock Delete is
// ignored, as TiKV's delegate sees Put commands only). Like
// endpoint.rs on_collect_progress, every subscription with advanced_to > 0
// is reported on every tick, even when it did not move: per connection
// (request_id 0), or per request_id with stream multiplexing, regions are
// popped from a min-heap in batches of 8, 32, 128, … and each batch is one
// ResolvedTs{regions, ts = batch minimum}. Old clients get one per-region
// Event.resolved_ts each. Nothing is reported before INITIALIZED.
//
// # Topology
//
// cluster.Watch callbacks run under the cluster's write lock, after every
// earlier data command was observed, so an error is queued behind every row
// of a command applied before the change and no row follows it: split →
// EpochNotMatch with the new regions; merge → EpochNotMatch (no regions) for
// the source, RegionNotFound for the target; leader moved off this store →
// NotLeader with the new leader; this store going down → every stream fails
// with UNAVAILABLE. After an error the subscription is gone (re-registering
// the same ids is allowed). Deregister answers RegionNotFound for every
// subscription it removes. A client closing its send side ends every
// subscription of the stream; queued events are still sent, then the stream
// ends with OK.
//
// # Flow control
//
// Each stream has one ordered queue drained by one sender goroutine. Scan
// output is bounded per stream (128 Events, TiKV's CDC_CHANNLE_CAPACITY):
// a slow consumer blocks the scan, never loses it. Live rows cannot block
// (the observer runs inside the apply path), so they are charged to a
// store-wide memory quota (cdc.sink-memory-quota, 512 MiB). When live rows
// do not fit, the region's delegate stops: every subscription of the
// region on the store, on every stream, gets Congested and is removed, as
// in TiKV (Endpoint::on_multi_batch → Deregister::Delegate →
// Delegate::stop). A store without a peer of the region answers a
// Register with RegionNotFound; a conf change (peer move) is no error.
// Errors bypass both limits.
//
// # Differences from TiKV
//
//   - NotifyTxnStatus makes TiKV abort (unreachable!); here the stream fails
//     with UNAVAILABLE, which is what a client of a crashed TiKV sees.
//   - RawKV (api-version 2) is not supported: kv_api RawKV gets
//     Compatibility like a TiKV on api-version 1.
//   - Leadership is taken from the cluster book, not verified with
//     CheckLeader/read-index before advancing (the book is the truth here).
//   - Rows of one command are in key order; TiKV's order is unspecified.
//   - The watchdog that aborts idle connections after 20 minutes is absent.
package cdc
