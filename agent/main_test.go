package agent_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: an
// agent runs for months, so a goroutine leaked per task, region or stream
// is a leak in production.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

// leakIgnores are goroutines of libraries, not of the agent, that outlive
// the tests that started them.
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		// opencensus's stats worker (linked through the GCS client):
		// started by its package init, for the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// The tests' workload client (client-go; the agent does not use
		// it): a batch stream to a store stopped by the test keeps
		// waiting for the connection a while after Close.
		goleak.IgnoreAnyFunction("github.com/tikv/client-go/v2/internal/client.(*batchCommandsClient).batchRecvLoop"),
	}
}
