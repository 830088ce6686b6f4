package deb

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/deploy/package/internal/pkgtest"
)

func TestVersion(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"tag", "v1.2.3", "1.2.3"},
		{"after tag", "v1.2.3-4-gabcdef0-dirty", "1.2.3+4+gabcdef0+dirty"},
		{"no tag yet", "5a13187", "0~git5a13187"},
		{"hash starting with a letter", "abc1234-dirty", "0~gitabc1234+dirty"},
		{"empty", "", "0~dev"},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, Version(tc.in)) })
	}
}

// TestDebContents builds the package from the real binary and reads it back
// with dpkg-deb: the files, their modes and owners, the conffiles and the
// maintainer scripts.
func TestDebContents(t *testing.T) {
	dpkgDeb := pkgtest.Tool(t, "dpkg-deb", "dpkg")
	bin := pkgtest.Binary(t, "v9.8.7-test")
	out, err := Build(Options{Binary: bin, Root: pkgtest.Root, Version: "v9.8.7-test", Arch: "amd64", OutDir: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, "pitr_9.8.7+test_amd64.deb", filepath.Base(out))

	info, err := exec.Command(dpkgDeb, "--info", out).CombinedOutput()
	require.NoError(t, err, "%s", info)
	for _, want := range []string{"Package: pitr", "Version: 9.8.7+test", "Architecture: amd64", "conffiles", "postinst", "prerm", "postrm"} {
		require.Contains(t, string(info), want)
	}
	require.NotContains(t, string(info), "Depends:", "the package depends on nothing")

	contents, err := exec.Command(dpkgDeb, "--contents", out).CombinedOutput()
	require.NoError(t, err, "%s", contents)
	// -rwxr-xr-x root/root  12345 1970-01-01 00:00 ./usr/bin/pitr
	line := regexp.MustCompile(`^(\S+)\s+(\S+)\s+\d+\s+\S+\s+\S+\s+\.(/\S*)`)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(contents)), "\n") {
		m := line.FindStringSubmatch(l)
		require.NotNil(t, m, "unparsed line %q", l)
		got[m[3]] = m[1] + " " + m[2]
	}
	for path, want := range map[string]string{
		"/usr/bin/pitr":                                "-rwxr-xr-x root/root",
		"/lib/systemd/system/pitr-agent.service":       "-rw-r--r-- root/root",
		"/lib/systemd/system/pitr-coordinator.service": "-rw-r--r-- root/root",
		"/usr/lib/sysusers.d/pitr.conf":                "-rw-r--r-- root/root",
		"/etc/pitr/agent.toml":                         "-rw-r--r-- root/root",
		"/etc/pitr/coordinator.toml":                   "-rw-r--r-- root/root",
		"/usr/share/doc/pitr/README.md":                "-rw-r--r-- root/root",
	} {
		require.Equal(t, want, got[path], path)
	}

	// The control members, unpacked.
	ctl := t.TempDir()
	b, err := exec.Command(dpkgDeb, "--control", out, ctl).CombinedOutput()
	require.NoError(t, err, "%s", b)
	conffiles, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"/etc/pitr/agent.toml", "/etc/pitr/coordinator.toml"}, strings.Fields(string(conffiles)))
	for _, s := range []struct{ name, want string }{
		{"postinst", "systemd-sysusers /usr/lib/sysusers.d/pitr.conf"},
		{"postinst", "adduser --system --group --home /var/lib/pitr pitr"},
		{"postinst", "systemctl daemon-reload"},
		{"prerm", "systemctl stop pitr-agent.service pitr-coordinator.service"},
	} {
		st, err := os.Stat(filepath.Join(ctl, s.name))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o755), st.Mode().Perm(), s.name)
		b, err := os.ReadFile(filepath.Join(ctl, s.name))
		require.NoError(t, err)
		require.Contains(t, string(b), s.want, s.name)
		if sh, err := exec.LookPath("sh"); err == nil {
			out, err := exec.Command(sh, "-n", filepath.Join(ctl, s.name)).CombinedOutput()
			require.NoError(t, err, "sh -n %s: %s", s.name, out)
		}
	}

	// The packaged binary is the one built, version included.
	x := t.TempDir()
	b, err = exec.Command(dpkgDeb, "-x", out, x).CombinedOutput()
	require.NoError(t, err, "%s", b)
	b, err = exec.Command(filepath.Join(x, "usr/bin/pitr"), "--version").CombinedOutput()
	require.NoError(t, err, "%s", b)
	require.Equal(t, "pitr v9.8.7-test\n", string(b))
}
