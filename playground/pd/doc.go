// Package pd is the playground's Placement Driver: an embedded etcd whose
// client URL also serves the pdpb.PD gRPC service, like a single-member PD.
// Unmodified client-go and the Go PD client (github.com/tikv/pd/client)
// connect to Server.Addr() for both: the PD client for members, TSO, regions,
// stores and GC safepoints, and client-go's etcd client for its safepoint KV.
// With Config.TLS set the one port serves all of it (gRPC, etcd, the HTTP
// API) over TLS only, requiring a client certificate, and the member's
// URLs are https.
//
// The region book is the shared playground/cluster.Cluster; this package only
// answers questions about it (regions, leaders, stores, ids). Region keys on
// the pdpb wire are memcomparable-encoded, as the cluster keeps them.
//
// # Persisted state (in the embedded etcd, under Dir/pd)
//
// Keys follow PD's layout, with root = "/pd/<cluster_id>":
//
//	<root>/timestamp                       8 bytes, big-endian uint64 unix nanoseconds:
//	                                       upper bound of every TSO physical part
//	                                       issued so far (PD's TSO save window)
//	<root>/gc/safe_point                   GC safepoint, lower-case hex uint64
//	<root>/gc/safe_point/service/<id>      JSON {"service_id": string,
//	                                       "expired_at": int64 unix seconds
//	                                       (math.MaxInt64 = never),
//	                                       "safe_point": uint64}
//
// # TSO
//
// A timestamp is physical<<18 | logical, physical being wall-clock
// milliseconds. Timestamps are strictly increasing, also across restarts on
// the same Dir: before a physical part at or past the saved bound is issued,
// the bound is moved 3 s ahead; on start the allocator begins above it.
//
// # GC
//
// Service safepoints follow PD's legacy UpdateServiceGCSafePoint rules (TTL
// in seconds, TTL <= 0 deletes, a safepoint below the current minimum is not
// stored, the response carries the minimum; "gc_worker" always exists and
// never expires). AdvanceGC plays TiDB's GC worker: it moves "gc_worker" to
// now - GCLifeTime and the GC safepoint to the minimum live service
// safepoint, never backwards. The PD 9 GC-state API (GetGCState,
// SetGCBarrier, DeleteGCBarrier) is served on the same data: barriers are
// service safepoints, and the txn safe point equals the GC safepoint.
//
// # Scheduling
//
// The client URL also serves the part of PD's HTTP API (/pd/api/v1/) that
// BR and Lightning use around an import (http.go): listing schedulers,
// pausing one for a delay (0 resumes; a pause is a deadline, so it lapses
// by itself), reading and setting the schedule config, and temporary
// (ttlSecond) config overrides. pdpb SplitRegions and ScatterRegion answer
// as PD does (split.go; keys are encoded); scattering moves leaders only,
// as every store holds a peer of every region.
//
// With Config.BalanceInterval > 0 a balancer plays PD's coordinator
// (schedule.go): balance-leader moves leaders off the busiest store and
// the merge checker merges adjacent regions, each honouring its pause,
// leader-/merge-schedule-limit, max-merge-region-size/-keys and
// split-merge-interval. balance-region, balance-hot-region and
// evict-slow-store are listed and pausable but do nothing. The scheduling
// state is in memory (real PD keeps TTL overrides in etcd).
package pd
