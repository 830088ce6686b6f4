// Command pitr-playground runs the playground, a local TiKV/PD-compatible
// cluster (the test bed of pitr), and the demo on it (`make demo`). It is
// apart from the pitr binary so that pitr links neither the playground nor
// an etcd server.
package main

import (
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
)

func main() { cli.Main(newRootCmd()) }

// newRootCmd is the playground command with demo under it.
func newRootCmd() *cobra.Command {
	root := newPlaygroundCmd()
	root.Use = "pitr-playground [--stores 3] [--dir D] [--pd-addr ADDR] [--ctl-addr ADDR] [--tls-dir D] | pitr-playground demo"
	root.SilenceUsage, root.SilenceErrors = true, true
	root.CompletionOptions = cobra.CompletionOptions{DisableDefaultCmd: true}
	root.AddCommand(newDemoCmd())
	cli.Strict(root)
	return root
}
