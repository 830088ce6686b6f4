// Package systemd checks the units in deploy/systemd with systemd's own
// verifier.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/deploy/package/internal/pkgtest"
)

var units = []string{"pitr-agent.service", "pitr-coordinator.service"}

// TestUnitsVerify runs systemd-analyze verify on each unit. verify checks
// that ExecStart's binary exists on this machine, so it runs on a copy whose
// /usr/bin/pitr is the pitr binary built for the test. Any line it prints
// about the unit (a warning too) fails the test.
func TestUnitsVerify(t *testing.T) {
	analyze := pkgtest.Tool(t, "systemd-analyze", "systemd")
	bin := pkgtest.Binary(t, "test")
	dir := t.TempDir()
	for _, u := range units {
		t.Run(u, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(pkgtest.Root, "deploy", "systemd", u))
			require.NoError(t, err)
			require.Contains(t, string(b), "ExecStart=/usr/bin/pitr ")
			unit := strings.ReplaceAll(string(b), "ExecStart=/usr/bin/pitr ", "ExecStart="+bin+" ")
			p := filepath.Join(dir, u)
			require.NoError(t, os.WriteFile(p, []byte(unit), 0o644))
			cmd := exec.Command(analyze, "verify", "--man=no", p)
			// Keep the pager and colour out of the output.
			cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
			out, err := cmd.CombinedOutput()
			for _, l := range strings.Split(string(out), "\n") {
				require.NotContains(t, l, strings.TrimSuffix(u, ".service"), "systemd-analyze verify:\n%s", out)
			}
			require.NoError(t, err, "systemd-analyze verify:\n%s", out)
		})
	}
}

// TestUnitsHardened: the settings the brief for bare metal asks of both
// units, so that a later edit does not drop one silently.
func TestUnitsHardened(t *testing.T) {
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join(pkgtest.Root, "deploy", "systemd", u))
		require.NoError(t, err)
		lines := map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			lines[strings.TrimSpace(l)] = true
		}
		for _, want := range []string{
			"User=pitr", "Group=pitr", "StateDirectory=pitr", "ReadWritePaths=/var/lib/pitr",
			"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
			"PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
			"ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
			"ProtectHostname=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
			"RestrictNamespaces=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
			"RestrictRealtime=yes", "RestrictSUIDSGID=yes", "SystemCallArchitectures=native",
			"SystemCallFilter=@system-service", "CapabilityBoundingSet=", "Restart=on-failure",
			"LimitNOFILE=65536",
		} {
			require.True(t, lines[want], "%s: missing %q", u, want)
		}
	}
}
