package image

import (
	"archive/tar"
	"errors"
	"io"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/deploy/package/internal/pkgtest"
)

// TestImageLayout builds the image from the real binary, then reads the OCI
// layout back as a registry client would and checks the config and the layer.
func TestImageLayout(t *testing.T) {
	bin := pkgtest.Binary(t, "v9.8.7-test")
	dir := t.TempDir()
	o := Options{Binary: bin, Root: pkgtest.Root, Version: "v9.8.7-test", Arch: "amd64",
		Layout: filepath.Join(dir, "image-oci"), Tarball: filepath.Join(dir, "pitr.tar")}
	_, err := Build(o)
	require.NoError(t, err)

	idx, err := layout.ImageIndexFromPath(o.Layout)
	require.NoError(t, err)
	im, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, im.Manifests, 1)
	desc := im.Manifests[0]
	require.Equal(t, types.OCIManifestSchema1, desc.MediaType)
	require.Equal(t, "v9.8.7-test", desc.Annotations["org.opencontainers.image.ref.name"])
	img, err := idx.Image(desc.Digest)
	require.NoError(t, err)
	checkImage(t, img)

	// The tarball holds the same image.
	timg, err := tarball.ImageFromPath(o.Tarball, nil)
	require.NoError(t, err)
	checkImage(t, timg)
}

func checkImage(t *testing.T, img v1.Image) {
	t.Helper()
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	require.Equal(t, "layers", cf.RootFS.Type)
	require.Len(t, cf.RootFS.DiffIDs, 1)
	require.Equal(t, "linux", cf.OS)
	require.Equal(t, "amd64", cf.Architecture)
	require.Equal(t, "65532:65532", cf.Config.User)
	require.NotContains(t, []string{"", "0", "root", "0:0"}, cf.Config.User)
	require.Equal(t, []string{"/usr/bin/pitr"}, cf.Config.Entrypoint)
	for _, p := range []string{"9595/tcp", "9596/tcp", "9597/tcp"} {
		require.Contains(t, cf.Config.ExposedPorts, p)
	}
	require.Equal(t, "v9.8.7-test", cf.Config.Labels["org.opencontainers.image.version"])
	require.Equal(t, "https://github.com/pitr-io/pitr", cf.Config.Labels["org.opencontainers.image.source"])
	require.Equal(t, "pitr", cf.Config.Labels["org.opencontainers.image.title"])
	require.NotEmpty(t, cf.Config.Labels["org.opencontainers.image.description"])

	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	diff, err := layers[0].DiffID()
	require.NoError(t, err)
	require.Equal(t, cf.RootFS.DiffIDs[0], diff)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		got[h.Name] = h
	}
	require.Contains(t, got, "usr/bin/pitr")
	require.Equal(t, int64(0o755), got["usr/bin/pitr"].Mode)
	require.Equal(t, byte(tar.TypeReg), got["usr/bin/pitr"].Typeflag)
	for _, c := range []string{"etc/pitr/agent.toml", "etc/pitr/coordinator.toml"} {
		require.Contains(t, got, c)
		require.Equal(t, int64(0o644), got[c].Mode, c)
	}
	require.Equal(t, 65532, got["var/lib/pitr/"].Uid, "the spill dir belongs to the image's user")
}

func TestTag(t *testing.T) {
	require.Equal(t, "v1.2.3-4-gabc", Tag("v1.2.3-4-gabc"))
	require.Equal(t, "a_b", Tag("a+b"))
	require.Equal(t, "dev", Tag(""))
}
