// Command helm renders and lints the handoff chart with the Helm library
// (helm.sh/helm/v3) instead of a helm binary, for tests and for people
// without helm installed. It lives in its own module so that the main
// module does not depend on Helm.
//
//	go -C hack/tools/helm run . template [--set k=v] [-f values.yaml]
//	go -C hack/tools/helm run . lint     [--set k=v] [-f values.yaml]
//	go -C hack/tools/helm run . kustomize [DIR]   # default config/default
//
// template prints what `helm template --include-crds` prints (and the
// rendered NOTES.txt with --notes); lint is `helm lint --strict` and exits 1
// on any warning.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var (
		chart   = fs.String("chart", "", "chart directory (default: charts/handoff of the repository)")
		rel     = fs.String("release", "handoff", "release name")
		ns      = fs.String("namespace", "handoff-system", "release namespace")
		kube    = fs.String("kube-version", defaultKubeVersion, "Kubernetes version to render and lint for")
		notes   = fs.Bool("notes", false, "template: print the rendered NOTES.txt after the manifests")
		sets    listFlag
		vfiles  listFlag
		rootErr error
	)
	fs.Var(&sets, "set", "set a value (key=value, as helm --set); repeatable")
	fs.Var(&vfiles, "f", "values file; repeatable")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	root, rootErr := repoRoot()
	if *chart == "" {
		if rootErr != nil {
			fail(rootErr)
		}
		*chart = filepath.Join(root, "charts", "handoff")
	}
	vals, err := parseValues(vfiles, sets)
	if err != nil {
		fail(err)
	}
	o := renderOptions{Chart: *chart, Release: *rel, Namespace: *ns, KubeVersion: *kube, Values: vals}

	switch cmd {
	case "template":
		r, err := renderChart(o)
		if err != nil {
			fail(err)
		}
		fmt.Print(r.Manifest)
		if *notes {
			fmt.Printf("\nNOTES:\n%s\n", r.Info.Notes)
		}
	case "lint":
		msgs, err := lintChart(o)
		for _, m := range msgs {
			fmt.Println(m)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "lint --strict: %s: FAILED\n", *chart)
			os.Exit(1)
		}
		fmt.Printf("lint --strict: %s: 1 chart linted, no warnings or errors\n", *chart)
	case "kustomize":
		dir := fs.Arg(0)
		if dir == "" {
			if rootErr != nil {
				fail(rootErr)
			}
			dir = filepath.Join(root, "config", "default")
		}
		out, err := buildKustomization(dir)
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(out)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: helm template|lint [--chart DIR] [--release NAME] [--namespace NS] [--kube-version V] [--set k=v]... [-f FILE]... [--notes]\n       helm kustomize [DIR]")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "helm:", err)
	os.Exit(1)
}
