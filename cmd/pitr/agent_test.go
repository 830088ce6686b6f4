package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground/certs"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

// TestAgentConfigLayers: defaults → file → flags (only those given).
func TestAgentConfigLayers(t *testing.T) {
	file := writeFile(t, `
pd = ["10.0.0.1:2379", "10.0.0.2:2379"]
tikv = "10.0.0.5:20160"
data-dir = "/var/lib/pitr"
flush-interval = "2s"
memory-budget = "64MiB"
spill-budget = "1GiB"
file-target = "32MiB"
listen = "0.0.0.0:9595"
advertise = "10.0.0.5:9595"
`)
	changed := map[string]bool{"tikv": true}
	o := agentOptions{configPath: file, logLevel: "info"}
	require.NoError(t, loadAgentOptions(&o, func(n string) bool { return changed[n] }, "", "10.0.0.6:20160", "", "127.0.0.1:9595", "127.0.0.1:9596"))
	c := o.cfg
	require.Equal(t, []string{"10.0.0.1:2379", "10.0.0.2:2379"}, c.PDAddrs)
	require.Equal(t, "10.0.0.6:20160", c.TiKVAddr, "the flag wins")
	require.Equal(t, "/var/lib/pitr", c.DataDir)
	require.Equal(t, 2*time.Second, c.FlushInterval)
	require.Equal(t, int64(64<<20), c.MemoryBudget)
	require.Equal(t, int64(1<<30), c.SpillBudget)
	require.Equal(t, int64(32<<20), c.FileTarget)
	require.Equal(t, "0.0.0.0:9595", c.ListenAddr, "the file wins over a flag default")
	require.Equal(t, "10.0.0.5:9595", c.AdvertiseAddr)
	require.Equal(t, "127.0.0.1:9596", c.HTTPAddr, "flag default when the file is silent")
	require.Equal(t, 4, c.UploadConcurrency, "agent default")

	// Flags alone.
	o = agentOptions{logLevel: "info"}
	require.NoError(t, loadAgentOptions(&o, func(string) bool { return false }, "a:1, b:2", "c:3", "", "127.0.0.1:0", "-"))
	require.Equal(t, []string{"a:1", "b:2"}, o.cfg.PDAddrs)
	require.Contains(t, o.cfg.DataDir, "pitr-agent-c_3")
	require.Equal(t, 5*time.Second, o.cfg.FlushInterval)
}

// TestAgentAdvertise: --advertise wins over the file's key; absent from
// both, nothing is set and the agent registers its listener's address.
func TestAgentAdvertise(t *testing.T) {
	file := writeFile(t, "pd = [\"a:1\"]\ntikv = \"b:2\"\nlisten = \"0.0.0.0:9595\"\nadvertise = \"10.0.0.5:9595\"\n")
	for _, tc := range []struct {
		name    string
		config  string
		flag    string // "" = not given
		want    string
		wantErr string
	}{
		{name: "neither", want: ""},
		{name: "file", config: file, want: "10.0.0.5:9595"},
		{name: "flag", flag: "10.1.2.3:9595", want: "10.1.2.3:9595"},
		{name: "flag over file", config: file, flag: "tikv-0.peer:9595", want: "tikv-0.peer:9595"},
		{name: "wildcard", flag: "0.0.0.0:9595", wantErr: "advertise address"},
		{name: "no port", flag: "10.1.2.3", wantErr: "advertise address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := agentOptions{configPath: tc.config, logLevel: "info", advertise: tc.flag}
			changed := func(n string) bool { return n == "advertise" && tc.flag != "" }
			err := loadAgentOptions(&o, changed, "a:1", "b:2", "", "0.0.0.0:9595", "-")
			if tc.wantErr != "" {
				require.Equal(t, cli.ExitUsage, cli.Code(err), "%v", err)
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, o.cfg.AdvertiseAddr)
		})
	}

	// The flag is wired to the command.
	_, err := run("agent", "--pd", "h:1", "--tikv", "h:2", "--advertise", "0.0.0.0:1")
	require.Equal(t, cli.ExitUsage, cli.Code(err), "%v", err)
	require.ErrorContains(t, err, "advertise address")
}

func TestAgentUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no pd", []string{"agent", "--tikv", "h:1"}, "PD addresses are required"},
		{"no tikv", []string{"agent", "--pd", "h:1"}, "TiKV address is required"},
		{"bad tikv", []string{"agent", "--pd", "h:1", "--tikv", "nope"}, "want host:port"},
		{"bad level", []string{"agent", "--pd", "h:1", "--tikv", "h:2", "--log-level", "loud"}, "--log-level"},
		{"unknown key", []string{"agent", "--config", writeFile(t, "pd = [\"h:1\"]\ntikv = \"h:2\"\nflush = \"1s\"\n")}, "unknown keys: flush"},
		{"bad size", []string{"agent", "--config", writeFile(t, "memory-budget = \"lots\"\n")}, `size "lots"`},
		{"missing file", []string{"agent", "--config", "/nonexistent/agent.toml"}, "/nonexistent/agent.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.args...)
			require.Error(t, err)
			require.Equal(t, cli.ExitUsage, cli.Code(err), "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			require.False(t, strings.Contains(err.Error(), "\n"), "one line: %q", err.Error())
		})
	}
}

// TestAgentPDUnreachable: exit status 3 within the bounded wait.
func TestAgentPDUnreachable(t *testing.T) {
	file := writeFile(t, "connect-timeout = \"1s\"\n")
	start := time.Now()
	_, err := run("agent", "--pd", "127.0.0.1:1", "--tikv", "127.0.0.1:2", "--data-dir", t.TempDir(), "--config", file,
		"--listen", "127.0.0.1:0", "--http", "-", "--log-level", "error")
	require.Error(t, err)
	require.Equal(t, cli.ExitUnavailable, cli.Code(err), "%v", err)
	require.Contains(t, err.Error(), "connect to PD 127.0.0.1:1")
	require.Less(t, time.Since(start), 10*time.Second)
}

// TestSecurityConfigLayers: [security] in the TOML, --ca/--cert/--key
// over it, and TLS mistakes as usage errors.
func TestSecurityConfigLayers(t *testing.T) {
	dir := t.TempDir()
	p, err := certs.Ensure(dir)
	require.NoError(t, err)
	file := writeFile(t, `
pd = ["10.0.0.1:2379"]
tikv = "10.0.0.5:20160"
[security]
ca-path = "`+p.CA+`"
cert-path = "`+p.Cert+`"
key-path = "`+p.Key+`"
cert-allowed-cn = ["pitr-coordinator"]
`)
	o := agentOptions{configPath: file, logLevel: "info"}
	require.NoError(t, loadAgentOptions(&o, func(string) bool { return false }, "", "", "", "127.0.0.1:0", "-"))
	require.Equal(t, connector.TLS{CA: p.CA, Cert: p.Cert, Key: p.Key}, o.cfg.TLS)
	require.Equal(t, []string{"pitr-coordinator"}, o.cfg.AllowedCN)

	o = agentOptions{configPath: file, logLevel: "info", tls: tlsFlags{cert: p.ClientCert, key: p.ClientKey}}
	changed := map[string]bool{"cert": true, "key": true}
	require.NoError(t, loadAgentOptions(&o, func(n string) bool { return changed[n] }, "", "", "", "127.0.0.1:0", "-"))
	require.Equal(t, connector.TLS{CA: p.CA, Cert: p.ClientCert, Key: p.ClientKey}, o.cfg.TLS, "the flags win")

	o = agentOptions{logLevel: "info", tls: tlsFlags{cert: p.Cert}}
	err = loadAgentOptions(&o, func(string) bool { return false }, "a:1", "b:2", "", "127.0.0.1:0", "-")
	require.Equal(t, cli.ExitUsage, cli.Code(err))
	require.ErrorContains(t, err, "--ca is required")

	co := coordinatorOptions{configPath: writeFile(t, "pd = [\"a:1\"]\n[security]\ncert-allowed-cn = [\"x\"]\n"), logLevel: "info"}
	err = loadCoordinatorOptions(&co, func(string) bool { return false }, "", "-", "", time.Second, time.Hour)
	require.Equal(t, cli.ExitUsage, cli.Code(err))
	require.ErrorContains(t, err, "agent setting")
}
