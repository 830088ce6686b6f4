// Package image builds pitr's container image as an OCI image layout,
// without a container daemon: one layer holding the static binary and the
// example configs, run as a non-root user.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the image's user: a fixed unprivileged uid/gid ("nonroot" in
// distroless images), which owns /var/lib/pitr.
const User = "65532:65532"

// Ports the binary serves by default: agent gRPC, agent HTTP, coordinator HTTP.
var Ports = []string{"9595/tcp", "9596/tcp", "9597/tcp"}

// Options says what goes into the image and where it is written.
type Options struct {
	Binary  string // the static pitr binary
	Root    string // the repository root (deploy/*.toml)
	Version string
	Arch    string // GOARCH
	Layout  string // OCI image layout directory, created or replaced
	Tarball string // optional: also a docker-loadable tarball here
	Created time.Time
}

// Tag is the image tag for a version: what a tag may hold, "dev" if empty.
func Tag(version string) string {
	var b strings.Builder
	for _, r := range version {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteRune('_')
		}
	}
	if b.Len() == 0 {
		return "dev"
	}
	return b.String()
}

// Image builds the image in memory.
func Image(o Options) (v1.Image, error) {
	layer, err := rootfsLayer(o)
	if err != nil {
		return nil, fmt.Errorf("build image layer: %w", err)
	}
	created := o.Created
	if created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	ports := map[string]struct{}{}
	for _, p := range Ports {
		ports[p] = struct{}{}
	}
	cfg := &v1.ConfigFile{
		Architecture: o.Arch,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		// The diff IDs are filled in by AppendLayers below.
		RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User:         User,
			Entrypoint:   []string{"/usr/bin/pitr"},
			Cmd:          []string{"--help"},
			WorkingDir:   "/var/lib/pitr",
			ExposedPorts: ports,
			Env:          []string{"PATH=/usr/bin:/bin"},
			Labels: map[string]string{
				"org.opencontainers.image.title":       "pitr",
				"org.opencontainers.image.description": "Continuous log backup and point-in-time restore for TiKV",
				"org.opencontainers.image.version":     o.Version,
				"org.opencontainers.image.source":      "https://github.com/pitr-io/pitr",
			},
		},
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(base, cfg)
	if err != nil {
		return nil, fmt.Errorf("build image config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: "pitr deploy/package/cmd/mkimage"},
	})
	if err != nil {
		return nil, fmt.Errorf("append image layer: %w", err)
	}
	return img, nil
}

// Build writes the OCI layout (and the tarball, if asked) and returns the image.
func Build(o Options) (v1.Image, error) {
	if o.Binary == "" || o.Root == "" || o.Arch == "" || o.Layout == "" {
		return nil, fmt.Errorf("build image: binary, root, arch and layout are required")
	}
	img, err := Image(o)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(o.Layout); err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	p, err := layout.Write(o.Layout, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("write oci layout: %w", err)
	}
	ref := "pitr:" + Tag(o.Version)
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": Tag(o.Version),
		"io.containerd.image.name":          "docker.io/library/" + ref,
	})); err != nil {
		return nil, fmt.Errorf("write oci layout: %w", err)
	}
	if o.Tarball != "" {
		tag, err := name.NewTag(ref)
		if err != nil {
			return nil, fmt.Errorf("image tag: %w", err)
		}
		if err := tarball.WriteToFile(o.Tarball, tag, img); err != nil {
			return nil, fmt.Errorf("write image tarball: %w", err)
		}
	}
	return img, nil
}

// rootfsLayer is the single layer: /usr/bin/pitr, /etc/pitr/*.toml and an
// empty /var/lib/pitr owned by User for the agent's spill runs.
func rootfsLayer(o Options) (v1.Layer, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0).UTC()
	dir := func(p string, uid int, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: mode, Uid: uid, Gid: uid, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(p string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"usr/", "usr/bin/", "etc/", "etc/pitr/", "var/", "var/lib/", "tmp/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := dir(d, 0, mode); err != nil {
			return nil, err
		}
	}
	if err := dir("var/lib/pitr/", 65532, 0o750); err != nil {
		return nil, err
	}
	if err := file("usr/bin/pitr", 0o755, bin); err != nil {
		return nil, err
	}
	for _, c := range []string{"agent.toml", "coordinator.toml"} {
		b, err := os.ReadFile(filepath.Join(o.Root, "deploy", c))
		if err != nil {
			return nil, err
		}
		if err := file("etc/pitr/"+c, 0o644, b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
