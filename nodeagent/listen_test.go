package nodeagent_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/handoff-dev/handoff/nodeagent"
)

// TestListenDirectoryMode: the agent sets the mode of a socket directory
// it creates, whatever the umask, but leaves the mode of one that already
// existed alone (HANDOFF_SOCKET=/tmp/x.sock must not make /tmp 0750).
func TestListenDirectoryMode(t *testing.T) {
	existing := t.TempDir()
	const existingMode = 0o711
	if err := os.Chmod(existing, existingMode); err != nil {
		t.Fatal(err)
	}
	startAgentT(t, nodeagent.Config{Socket: filepath.Join(existing, "agent.sock"), DirMode: 0o750})
	if fi, err := os.Stat(existing); err != nil || fi.Mode().Perm() != existingMode {
		t.Fatalf("existing socket directory: %v %v, want its mode %#o untouched", fi.Mode(), err, existingMode)
	}

	// 0770 is more than the usual umask of 022 lets mkdir give.
	created := filepath.Join(t.TempDir(), "run")
	startAgentT(t, nodeagent.Config{Socket: filepath.Join(created, "agent.sock"), DirMode: 0o770})
	if fi, err := os.Stat(created); err != nil || fi.Mode().Perm() != 0o770 {
		t.Fatalf("created socket directory: %v %v, want mode 0770", fi.Mode(), err)
	}
}
