package main

import "github.com/spf13/cobra"

func newDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run playground, agents, coordinator, a workload, a restore and a check, end to end",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("issue #6"),
	}
}
