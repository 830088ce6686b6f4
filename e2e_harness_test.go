package pitr_test

import (
	"os"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/connector"
)

// The end-to-end tests run on testkit/pipeline: a source playground with a
// backup task, an agent per store and two coordinators, all in this process.
func TestMain(m *testing.M) {
	// The PD client and client-go log every connection step through
	// pingcap/log, to stdout unless routed: warnings and errors to stderr.
	level := hclog.Warn
	if os.Getenv("PITR_DEBUG") != "" {
		level = hclog.Debug
	}
	connector.RouteClientLogs(hclog.New(&hclog.LoggerOptions{Name: "client", Level: level, Output: os.Stderr}))
	os.Exit(m.Run())
}
