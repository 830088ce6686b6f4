package storage_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestImportsNothingOfOurs: storage sits at the bottom of the dependency
// graph (STYLE.md); it may not import any other pitr package.
func TestImportsNothingOfOurs(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "github.com/pitr-io/pitr/storage").CombinedOutput()
	require.NoError(t, err, string(out))
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/pitr-io/pitr/") || p == "github.com/pitr-io/pitr" {
			require.Equal(t, "github.com/pitr-io/pitr/storage", p, "storage imports %s", p)
		}
	}
}
