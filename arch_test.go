package pitr_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/pitr-io/pitr"

// TestDependencyDirection enforces the import rules of STYLE.md over the
// non-test imports of every package (transitively):
//   - storage and proto import nothing of ours;
//   - keyspace (key ranges, key codec, TSO) is a leaf everything may use:
//     it imports nothing of ours;
//   - connector (the one way to a cluster) imports only keyspace;
//   - restore never imports agent or coordinator (restore works with the
//     source cluster gone);
//   - checksum (TiKV's range checksum) imports only keyspace and proto;
//   - snapshot (the full backup) imports neither agent, coordinator nor
//     restore: the agent and the command both run its scans;
//   - playground is imported only by cmd/pitr-playground, cmd/pitr-bench,
//     testkit and the playground itself (tests may import it freely);
//   - testkit (the harness) is imported only by tests, cmd/pitr-playground
//     (the demo) and cmd/pitr-bench, and its cluster layer (testkit
//     itself) imports neither agent nor coordinator, so that their own
//     internal tests can use it;
//   - volume (the provider interface of volume snapshots) imports nothing
//     of ours, volume/awsebs only volume, and its EC2 test server
//     (volume/awsebs/ec2test) is imported only by tests;
//   - the pitr binary links no etcd server and no playground.
func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json=ImportPath,Deps", "./...").Output()
	require.NoError(t, err, "go list")
	dec := json.NewDecoder(strings.NewReader(string(out)))
	deps := map[string][]string{}
	for {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else {
			require.NoError(t, err)
		}
		for _, d := range p.Deps {
			if p.ImportPath == module+"/cmd/pitr" && strings.HasPrefix(d, "go.etcd.io/etcd/server/") {
				t.Errorf("cmd/pitr links %s: the production binary links no etcd server", d)
			}
			if strings.HasPrefix(d, module+"/") {
				deps[p.ImportPath] = append(deps[p.ImportPath], strings.TrimPrefix(d, module+"/"))
			}
		}
		if _, ok := deps[p.ImportPath]; !ok {
			deps[p.ImportPath] = nil
		}
	}
	require.NotEmpty(t, deps)
	under := func(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }
	for full, ds := range deps {
		pkg := strings.TrimPrefix(full, module+"/")
		for _, d := range ds {
			switch {
			case (under(pkg, "storage") || under(pkg, "proto")) && !under(d, "storage") && !under(d, "proto"):
				t.Errorf("%s imports %s: storage and proto import nothing of ours", pkg, d)
			case under(pkg, "storage") && under(d, "proto"), under(pkg, "proto") && under(d, "storage"):
				t.Errorf("%s imports %s: storage and proto import nothing of ours", pkg, d)
			case under(pkg, "keyspace"):
				t.Errorf("%s imports %s: keyspace is a leaf and imports nothing of ours", pkg, d)
			case under(pkg, "connector") && !under(d, "keyspace"):
				t.Errorf("%s imports %s: connector imports only keyspace", pkg, d)
			case under(pkg, "restore") && (under(d, "agent") || under(d, "coordinator")):
				t.Errorf("%s imports %s: restore must work with the cluster gone", pkg, d)
			case under(pkg, "checksum") && !under(d, "keyspace") && !under(d, "proto"):
				t.Errorf("%s imports %s: checksum imports only keyspace and proto", pkg, d)
			case under(pkg, "snapshot") && (under(d, "agent") || under(d, "coordinator") || under(d, "restore")):
				t.Errorf("%s imports %s: snapshot imports neither agent, coordinator nor restore", pkg, d)
			case pkg == "volume":
				t.Errorf("%s imports %s: volume imports nothing of ours", pkg, d)
			case under(d, "volume/awsebs/ec2test") && !under(pkg, "volume/awsebs/ec2test"):
				t.Errorf("%s imports %s: ec2test is for tests only", pkg, d)
			case under(pkg, "volume/awsebs") && d != "volume" && !under(d, "volume/awsebs"):
				t.Errorf("%s imports %s: volume/awsebs imports only volume", pkg, d)
			case pkg == "cmd/pitr" && under(d, "playground"):
				t.Errorf("%s imports %s: the pitr binary links no playground (pitr-playground does)", pkg, d)
			case under(d, "playground") && !under(pkg, "playground") && !under(pkg, "cmd/pitr-playground") && !under(pkg, "cmd/pitr-bench") && !under(pkg, "testkit"):
				t.Errorf("%s imports %s: playground is for tests, cmd/pitr and demo code only", pkg, d)
			case under(d, "testkit") && !under(pkg, "testkit") && !under(pkg, "cmd/pitr-playground") && !under(pkg, "cmd/pitr-bench"):
				t.Errorf("%s imports %s: testkit is for tests, the demo and the bench only", pkg, d)
			case pkg == "testkit" && (under(d, "agent") || under(d, "coordinator")):
				t.Errorf("%s imports %s: testkit's cluster layer imports neither agent nor coordinator (testkit/pipeline does)", pkg, d)
			}
		}
	}
}
