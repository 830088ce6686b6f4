// Package pkgtest holds what the packaging tests share: the real pitr
// binary, built once per test binary, and the rule for missing tools.
package pkgtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Root is the repository root, seen from a package directory of this module.
const Root = "../../.."

var (
	once   sync.Once
	bin    string
	binErr error
	binOut []byte
)

// Binary builds the real pitr binary the way make package does (static,
// version linked in) and returns its path.
func Binary(t *testing.T, version string) string {
	t.Helper()
	once.Do(func() {
		dir, err := os.MkdirTemp("", "pitr-pkgtest")
		if err != nil {
			binErr = err
			return
		}
		bin = filepath.Join(dir, "pitr")
		abs, err := filepath.Abs(Root)
		if err != nil {
			binErr = err
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/pitr")
		cmd.Dir = abs
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
		binOut, binErr = cmd.CombinedOutput()
	})
	if binErr != nil {
		t.Fatalf("go build ./cmd/pitr: %v\n%s", binErr, binOut)
	}
	return bin
}

// Tool returns the path of a command the test needs. Without it the test
// skips, saying how to get it, except under CI (env CI set), where it fails:
// scripts/tools.sh installs it there.
func Tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found (apt-get install " + pkg + "; make tools installs it as root)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
