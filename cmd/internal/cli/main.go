package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/connector"
)

// Main runs root until SIGINT/SIGTERM and exits with the documented
// status, printing an error on one line that names the command.
func Main(root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Until a command routes them at its own level: the PD client's and
	// client-go's warnings on stderr, nothing on stdout.
	RouteClientLogs(os.Stderr, hclog.Warn)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	// Most errors already start with the command path ("pitr task start:
	// ..."); the rest get the binary's name.
	msg := err.Error()
	if !strings.HasPrefix(msg, root.Name()) {
		msg = root.Name() + ": " + msg
	}
	fmt.Fprintln(os.Stderr, msg)
	stop()
	os.Exit(Code(err))
}

// RouteClientLogs sends the PD client's and client-go's logs to stderr at
// level (Off silences them: one-shot commands print one line), never to
// stdout; see connector.RouteClientLogs.
func RouteClientLogs(stderr io.Writer, level hclog.Level) {
	connector.RouteClientLogs(hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: stderr}))
}

// ParseSize parses "1048576", "512KiB", "256MiB", "8GiB" (also KB/MB/GB,
// read as binary units too).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < -1 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional KiB/MiB/GiB suffix", s)
	}
	return n * mult, nil
}

// Execute runs root with args in this process, its output and errors
// into one buffer, and returns both: how the binaries' tests drive them.
func Execute(root *cobra.Command, args ...string) (string, error) {
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}
