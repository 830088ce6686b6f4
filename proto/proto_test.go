package pitrpb

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	protobuf "google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite the checked-in format fixtures")

// TestGeneratedCodeIsFresh regenerates the Go code and fails when the
// committed code differs: run `make proto` and commit.
func TestGeneratedCodeIsFresh(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("protoc is required in CI: %v", err)
		}
		t.Skip("protoc not installed; run scripts/tools.sh")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "gen.sh", out)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Run(), "proto/gen.sh")
	// The protoc version line depends on the machine, not on the source.
	ver := regexp.MustCompile(`(?m)^//\s+protoc\s+v.*$`)
	for _, f := range []string{"pitr.pb.go", "pitr_grpc.pb.go", "tipb/checksum.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		require.NoError(t, err)
		got, err := os.ReadFile(f)
		require.NoError(t, err)
		require.True(t, bytes.Equal(ver.ReplaceAll(want, nil), ver.ReplaceAll(got, nil)),
			"proto/%s is stale: run `make proto` and commit the result", f)
	}
}

// fixtureMeta is the meta stored in testdata/meta-v1.pb. The fixture was
// written by the first build that shipped format v1; it must keep decoding
// to the same message forever.
func fixtureMeta() *Meta {
	return &Meta{
		FormatVersion: uint32(FormatVersion_FORMAT_VERSION_V1),
		StoreId:       4,
		FlushTs:       0x0654_3210_0000_0001,
		Task:          "fixture",
		Files: []*DataFile{{
			Path:         "log/20261122/13/4/0654321000000001-0b3d.parquet",
			Size:         1234,
			Sha256:       bytes.Repeat([]byte{0xab}, 32),
			Rows:         10,
			MinKey:       []byte("a"),
			MaxKey:       []byte("z"),
			MinCommitTs:  100,
			MaxCommitTs:  200,
			MinStartTs:   90,
			LogicalBytes: 4096,
		}},
		Regions: []*RegionCoverage{{
			RegionId: 2, EpochVersion: 5, EpochConfVer: 1,
			StartKey: []byte("a"), EndKey: nil, FromTs: 50, ToTs: 210,
		}},
	}
}

func TestFormatFixtures(t *testing.T) {
	path := filepath.Join("testdata", "meta-v1.pb")
	if *update {
		b, err := protobuf.Marshal(fixtureMeta())
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, b, 0o644))
	}
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var m Meta
	require.NoError(t, protobuf.Unmarshal(b, &m))
	require.True(t, protobuf.Equal(fixtureMeta(), &m), "fixture decodes to %v", &m)
}
