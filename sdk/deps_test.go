package handoff_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The SDK is what applications link: it must not pull in Kubernetes
// libraries or anything beyond the standard library, x/sys and the two
// small packages of this module it is built on.
func TestSDKDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go command on PATH to list the SDK's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/handoff-dev/handoff/sdk").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	allowed := func(p string) bool {
		switch p {
		case "github.com/handoff-dev/handoff/sdk", "github.com/handoff-dev/handoff/wire", "github.com/handoff-dev/handoff/internal/gchold":
			return true
		}
		return strings.HasPrefix(p, "golang.org/x/sys/")
	}
	var deps []string
	for _, p := range strings.Fields(string(out)) {
		deps = append(deps, p)
		if !allowed(p) {
			t.Errorf("the SDK depends on %s", p)
		}
	}
	if len(deps) < 3 {
		t.Fatalf("go list found only %v: not the SDK's dependencies", deps)
	}
}
