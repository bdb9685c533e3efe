package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The example is a template: copied out of this repository it must still
// build, so no package of it, nor its tests, may import anything of this
// module but the SDK and the example's own packages (in particular nothing
// under internal/, which Go refuses to other modules).
func TestTemplateImportsOnlyTheSDK(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("needs the go command on PATH to list the example's imports: %v", err)
	}
	const module = "github.com/handoff-dev/handoff/"
	out, err := exec.Command(goTool, "list", "-f",
		`{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}`,
		module+"examples/streamer/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 4 {
		t.Fatalf("go list found only %q: not the example's packages", lines)
	}
	for _, l := range lines {
		f := strings.Fields(l)
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			if imp != module+"sdk" && !strings.HasPrefix(imp, module+"examples/streamer/") {
				t.Errorf("%s imports %s: a copy of the example could not build", f[0], imp)
			}
		}
	}
}
