package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/certs"
)

type playgroundOptions struct {
	stores   int
	dir      string
	pdAddr   string
	ctlAddr  string
	logLevel string
	tikvVer  string
	replicas int
	gc       time.Duration
	tlsDir   string
	defer_   bool
}

func newPlaygroundCmd() *cobra.Command {
	o := &playgroundOptions{}
	c := &cobra.Command{
		Use:   "playground [--stores 3] [--dir D] [--pd-addr ADDR] [--ctl-addr ADDR] [--tls-dir D]",
		Short: "Run a local TiKV/PD-compatible cluster (test bed and demo default)",
		Long: `Run a local cluster that speaks TiKV's and PD's gRPC protocols (tikvpb,
cdcpb, import_sstpb, pdpb, and etcd on the PD port), for tests and demos.
It prints its PD and control API addresses and runs until SIGINT/SIGTERM.

Control API (HTTP JSON on --ctl-addr): GET /regions, GET /stores,
POST /split {"key":base64}, POST /transfer-leader {"region_id","store_id"},
POST /merge {"left","right"}, POST /move-peer {"region_id","from_store","to_store"},
POST /pd/restart, POST /stores/{id}/stop, POST /stores/{id}/start, POST /gc.

--tikv-version X.Y.Z makes the stores report that version to PD and follow
its CDC behaviour: below 7.3 there is no Deregister (every request is a
Register), no EventFeedV2, and a stream holds one subscription per region.

GC runs every --gc-interval (0 turns it off), as in a TiKV cluster: below the
GC safepoint (PD's, bounded by service safepoints and a 10m life time) each
key keeps its newest Put and loses a newest Delete with everything older.
Each store also serves TiKV's status API on its own address (PD reports it as
the store's status_address): GET /config, POST /config {"gc.ratio-threshold":
"-1"}; a negative threshold turns GC off while every running store has it,
and a store restart resets it to 1.1.

--tls-dir D serves PD (gRPC, etcd and its HTTP API), every store's gRPC and
status API with TLS and requires a client certificate, as a cluster with
security configured does. The certificates in D are used when D holds all
of ca.pem, server.pem, server-key.pem, client.pem and client-key.pem, and
generated when it holds none of them; a client connects with
--ca D/ca.pem --cert D/client.pem --key D/client-key.pem. The control API
stays plain HTTP on its loopback address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPlayground(cmd, o)
		},
	}
	f := c.Flags()
	f.IntVar(&o.stores, "stores", 3, "number of stores of a new cluster")
	f.StringVar(&o.dir, "dir", "", "data directory (kept across restarts); empty keeps data in memory")
	f.StringVar(&o.pdAddr, "pd-addr", "127.0.0.1:2379", "PD listen address (127.0.0.1:0 picks a free port)")
	f.StringVar(&o.ctlAddr, "ctl-addr", "127.0.0.1:0", "control API listen address")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	f.IntVar(&o.replicas, "replicas", 0, "peers per region of a new cluster (default: every store), so /move-peer has somewhere to go")
	f.StringVar(&o.tikvVer, "tikv-version", cdc.DefaultVersion, "TiKV version the stores report and behave as (e.g. 7.1.0)")
	f.DurationVar(&o.gc, "gc-interval", playground.DefaultGCInterval, "how often GC runs; 0 turns it off")
	f.BoolVar(&o.defer_, "defer-stores", false, "start PD but no store; start the stores from restored volumes with POST /start-stores on the control API (volume-snapshot restore)")
	f.StringVar(&o.tlsDir, "tls-dir", "", "serve TLS requiring client certificates, with the certificates in this directory (generated when it has none)")
	return c
}

func runPlayground(cmd *cobra.Command, o *playgroundOptions) error {
	if o.stores < 1 || o.stores > 32 {
		return cli.Usagef("--stores must be between 1 and 32, got %d", o.stores)
	}
	level := hclog.LevelFromString(o.logLevel)
	if level == hclog.NoLevel {
		return cli.Usagef("--log-level %q is not one of trace, debug, info, warn, error", o.logLevel)
	}
	if o.replicas < 0 || o.replicas > o.stores {
		return cli.Usagef("--replicas must be between 1 and --stores (%d), got %d", o.stores, o.replicas)
	}
	ver, err := cdc.ParseVersion(o.tikvVer)
	if err != nil {
		return cli.Usagef("--tikv-version %q: %v", o.tikvVer, err)
	}
	if o.gc < 0 {
		return cli.Usagef("--gc-interval %s: want a duration of 0 (off) or more", o.gc)
	}
	gcInterval := o.gc
	if gcInterval == 0 {
		gcInterval = -1 // off
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: os.Stderr})
	ctx := cmd.Context()
	p, err := playground.Start(ctx, playground.Config{
		Stores: o.stores, Dir: o.dir, PDAddr: o.pdAddr, CtlAddr: o.ctlAddr, TiKVVersion: ver, Replicas: o.replicas,
		GCInterval: gcInterval, TLSDir: o.tlsDir, DeferStores: o.defer_, Logger: log,
	})
	if errors.Is(err, certs.ErrIncomplete) {
		// A --tls-dir holding part of a PKI is the user's to fix; nothing
		// was written to it.
		return cli.WithExit(cli.ExitUsage, fmt.Errorf("--tls-dir: %w", err))
	}
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("start playground: %w", err))
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "pd:  %s\n", p.PDAddr())
	fmt.Fprintf(out, "ctl: http://%s\n", p.CtlAddr())
	addrs := p.StoreAddrs()
	status := p.StatusAddrs()
	scheme := "http"
	if o.tlsDir != "" {
		scheme = "https"
	}
	for _, id := range p.StoreIDs() {
		fmt.Fprintf(out, "store %d: %s (status %s://%s)\n", id, addrs[id], scheme, status[id])
	}
	if files := p.ClientTLS(); files.CA != "" {
		fmt.Fprintf(out, "tls: certificates in %s; clients need a certificate\n", o.tlsDir)
		fmt.Fprintf(out, "client flags: --ca %s --cert %s --key %s\n", files.CA, files.Cert, files.Key)
	}
	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	return p.Close()
}
