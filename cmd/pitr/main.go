// Command pitr is the one binary of pitr: continuous log backup and
// point-in-time restore for TiKV. See DESIGN.md §7 for the CLI contract.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Until a command routes them at its own level: the PD client's and
	// client-go's warnings on stderr, nothing on stdout.
	routeClientLogs(os.Stderr, hclog.Warn)
	root := newRootCmd()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	// One line, naming the command: most errors already start with the
	// command path ("pitr task start: ..."); the rest get "pitr: ".
	msg := err.Error()
	if !strings.HasPrefix(msg, "pitr") {
		msg = "pitr: " + msg
	}
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(exitCode(err))
}

// exitCode maps an error to the documented exit status.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitFailure
}
