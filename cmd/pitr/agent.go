package main

import "github.com/spf13/cobra"

func newAgentCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "agent --pd ADDRS --tikv ADDR [--config agent.toml]",
		Short: "Run the capture agent beside one TiKV store",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("issue #4"),
	}
	c.Flags().String("pd", "", "PD addresses, comma separated")
	c.Flags().String("tikv", "", "address of the TiKV store this agent sits beside")
	c.Flags().String("config", "", "agent TOML config file")
	return c
}
