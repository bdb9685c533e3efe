package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runSync(t *testing.T, repo string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(repo, "hack", "sync-chart-crds.sh")}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	default:
		t.Fatalf("run sync-chart-crds.sh: %v", err)
		return "", -1
	}
}

// TestSyncChartCRDsCheck is what CI runs: the committed copies match what
// `make manifests` generated.
func TestSyncChartCRDsCheck(t *testing.T) {
	if out, code := runSync(t, root, "--check"); code != 0 {
		t.Fatalf("hack/sync-chart-crds.sh --check exited %d:\n%s", code, out)
	}
}

// TestSyncChartCRDsDetectsStale runs the script on a copy of the files it
// reads and writes, with a changed CRD and a leftover copy, to show that
// --check fails, names the stale files and changes nothing, and that a
// plain run repairs both.
func TestSyncChartCRDsDetectsStale(t *testing.T) {
	repo := t.TempDir()
	for _, p := range []string{"hack/sync-chart-crds.sh", "config/crd/bases", "config/rbac/manager/role.yaml", "config/rbac/nodeagent/role.yaml", "charts/handoff/files"} {
		copyPath(t, filepath.Join(root, p), filepath.Join(repo, p))
	}
	if out, code := runSync(t, repo, "--check"); code != 0 {
		t.Fatalf("--check of a faithful copy exited %d:\n%s", code, out)
	}

	crd := filepath.Join(repo, "config/crd/bases/handoff.dev_migrations.yaml")
	data, err := os.ReadFile(crd)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(data, []byte("shortNames:\n    - mig\n"), []byte("shortNames:\n    - mig\n    - migs\n"), 1)
	if bytes.Equal(changed, data) {
		t.Fatalf("the CRD no longer has the short name this test edits")
	}
	if err := os.WriteFile(crd, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(repo, "charts/handoff/files/crds/old.handoff.dev_things.yaml")
	if err := os.WriteFile(leftover, []byte("kind: CustomResourceDefinition\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, code := runSync(t, repo, "--check")
	if code != 1 {
		t.Fatalf("--check with a stale copy exited %d, want 1:\n%s", code, out)
	}
	for _, want := range []string{"charts/handoff/files/crds/handoff.dev_migrations.yaml differs", "old.handoff.dev_things.yaml has no source"} {
		if !strings.Contains(out, want) {
			t.Errorf("--check output lacks %q:\n%s", want, out)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(repo, "charts/handoff/files/crds/handoff.dev_migrations.yaml")); !bytes.Equal(got, data) {
		t.Errorf("--check changed the copy")
	}

	if out, code := runSync(t, repo); code != 0 {
		t.Fatalf("sync exited %d:\n%s", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(repo, "charts/handoff/files/crds/handoff.dev_migrations.yaml")); !bytes.Equal(got, changed) {
		t.Errorf("sync did not copy the changed CRD")
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sync left %s behind (%v)", leftover, err)
	}
	if out, code := runSync(t, repo, "--check"); code != 0 {
		t.Fatalf("--check after sync exited %d:\n%s", code, out)
	}
}

func copyPath(t *testing.T, src, dst string) {
	t.Helper()
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if fi.IsDir() {
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		return
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}
