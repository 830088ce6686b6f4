// Package testkit is pitr's one harness for tests, the demo and the bench
// that need a running cluster, in the manner of etcd's integration.NewCluster:
// a playground source with its clients (StartCluster), a workload hook
// (StartWorkload), a seeded chaos schedule (Chaos, Rand) and the reads and
// comparisons a restore is judged by (ReadAll, Diff, RequireSame). The
// pipeline on top of it (a backup task, agents, coordinators, waiting for the
// checkpoint and restoring into fresh targets) is testkit/pipeline.
//
// It is split in two so that packages the pipeline imports can still use the
// cluster layer from their own internal tests: this package imports neither
// agent nor coordinator (arch_test.go checks it), testkit/pipeline imports
// both.
//
// Everything takes a TB: *testing.T in tests, and Run's adapter in the demo
// and the bench, which turns a failure into an error instead of a failed
// test. It links no testify, so the demo binary does not either.
//
// It is imported only by tests, cmd/pitr-playground and cmd/pitr-bench;
// production code must not import it (arch_test.go checks that too).
package testkit
