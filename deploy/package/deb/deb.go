// Package deb builds pitr's Debian package with nfpm: the static binary,
// the systemd units and sysusers file from deploy/systemd, the example
// configs from deploy/ as conffiles, and maintainer scripts that create the
// pitr user and tell systemd about the units.
package deb

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

//go:embed scripts
var scripts embed.FS

// Options says what goes into the package and where it is written.
type Options struct {
	Binary  string // the pitr binary (built with CGO_ENABLED=0)
	Root    string // the repository root (deploy/, README.md)
	Version string // git describe output or a plain version; see Version
	Arch    string // Debian architecture: amd64, arm64
	OutDir  string
	// MTime is stamped on every file, so two builds of one commit match.
	MTime time.Time
}

// Version turns a git describe string into a Debian version: no leading
// "v", "-" (Debian's revision separator) becomes "+", and anything that
// is not a dotted release (a bare commit hash: no tag yet) sorts below
// every release as 0~git<hash>.
func Version(v string) string {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if v == "" || v == "dev" {
		return "0~dev"
	}
	if v[0] < '0' || v[0] > '9' || !strings.Contains(v, ".") {
		v = "0~git" + v
	}
	return strings.ReplaceAll(v, "-", "+")
}

// FileName is the package's name in OutDir: pitr_<version>_<arch>.deb.
func FileName(version, arch string) string {
	return fmt.Sprintf("pitr_%s_%s.deb", Version(version), arch)
}

// Build writes the package and returns its path.
func Build(o Options) (string, error) {
	if o.Binary == "" || o.Root == "" || o.Arch == "" || o.OutDir == "" {
		return "", fmt.Errorf("build deb: binary, root, arch and out dir are required")
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	tmp, err := os.MkdirTemp("", "pitr-deb-scripts")
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	defer os.RemoveAll(tmp)
	script := func(name string) (string, error) {
		b, err := scripts.ReadFile("scripts/" + name)
		if err != nil {
			return "", err
		}
		p := filepath.Join(tmp, name)
		return p, os.WriteFile(p, b, 0o755)
	}
	postinst, err := script("postinst")
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	prerm, err := script("prerm")
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	postrm, err := script("postrm")
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	mtime := o.MTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0).UTC()
	}
	root := func(p string) string { return filepath.Join(o.Root, filepath.FromSlash(p)) }
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m, MTime: mtime}
	}
	info := &nfpm.Info{
		Name:          "pitr",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       Version(o.Version),
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    "pitr developers <pitr@pitr.invalid>",
		Description: "continuous log backup and point-in-time restore for TiKV\n" +
			"An agent beside every TiKV store captures committed changes into\n" +
			"object storage; an elected coordinator keeps the global checkpoint;\n" +
			"pitr restore rebuilds the cluster as it was at any point in time.",
		Homepage: "https://github.com/pitr-io/pitr",
		License:  "Apache-2.0",
		MTime:    mtime,
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				{Source: o.Binary, Destination: "/usr/bin/pitr", FileInfo: mode(0o755)},
				{Source: root("deploy/systemd/pitr-agent.service"), Destination: "/lib/systemd/system/pitr-agent.service", FileInfo: mode(0o644)},
				{Source: root("deploy/systemd/pitr-coordinator.service"), Destination: "/lib/systemd/system/pitr-coordinator.service", FileInfo: mode(0o644)},
				{Source: root("deploy/systemd/pitr.sysusers"), Destination: "/usr/lib/sysusers.d/pitr.conf", FileInfo: mode(0o644)},
				{Source: root("deploy/agent.toml"), Destination: "/etc/pitr/agent.toml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				{Source: root("deploy/coordinator.toml"), Destination: "/etc/pitr/coordinator.toml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				{Source: root("README.md"), Destination: "/usr/share/doc/pitr/README.md", FileInfo: mode(0o644)},
			},
			Scripts: nfpm.Scripts{PostInstall: postinst, PreRemove: prerm, PostRemove: postrm},
		},
	}
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	out := filepath.Join(o.OutDir, FileName(o.Version, o.Arch))
	f, err := os.Create(out)
	if err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		return "", fmt.Errorf("build deb: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("build deb: %w", err)
	}
	return out, nil
}
