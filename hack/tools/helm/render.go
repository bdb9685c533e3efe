package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/strvals"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// defaultKubeVersion is the Kubernetes version the chart is rendered and
// linted for. The helm library alone reports v1.20 (a helm binary gets its
// version from link flags), which the chart's kubeVersion refuses; this is
// the version the project builds and tests against (K8S_VERSION).
const defaultKubeVersion = "v1.37.2"

// renderOptions are the inputs of one rendering, as `helm template` takes
// them.
type renderOptions struct {
	Chart       string
	Release     string
	Namespace   string
	KubeVersion string
	Values      map[string]any
}

// renderChart renders a chart the way `helm template --include-crds` does:
// a client-only dry-run install, so the values are validated against
// values.schema.json and NOTES.txt is rendered too.
func renderChart(o renderOptions) (*release.Release, error) {
	ch, err := loader.Load(o.Chart)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", o.Chart, err)
	}
	kv, err := chartutil.ParseKubeVersion(orDefault(o.KubeVersion, defaultKubeVersion))
	if err != nil {
		return nil, fmt.Errorf("kubernetes version %q: %w", o.KubeVersion, err)
	}
	inst := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	inst.DryRun = true
	inst.ClientOnly = true
	inst.Replace = true
	inst.IncludeCRDs = true
	inst.ReleaseName = orDefault(o.Release, "handoff")
	inst.Namespace = orDefault(o.Namespace, "handoff-system")
	inst.KubeVersion = kv
	vals := o.Values
	if vals == nil {
		vals = map[string]any{}
	}
	rel, err := inst.Run(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", o.Chart, err)
	}
	return rel, nil
}

// lintChart is `helm lint --strict`: every message of warning severity or
// worse is returned as an error.
func lintChart(o renderOptions) (messages []string, err error) {
	kv, err := chartutil.ParseKubeVersion(orDefault(o.KubeVersion, defaultKubeVersion))
	if err != nil {
		return nil, fmt.Errorf("kubernetes version %q: %w", o.KubeVersion, err)
	}
	l := action.NewLint()
	l.Strict = true
	l.Namespace = orDefault(o.Namespace, "handoff-system")
	l.KubeVersion = kv
	vals := o.Values
	if vals == nil {
		vals = map[string]any{}
	}
	res := l.Run([]string{o.Chart}, vals)
	for _, m := range res.Messages {
		messages = append(messages, m.Error())
	}
	if res.TotalChartsLinted != 1 && len(res.Errors) == 0 {
		return messages, fmt.Errorf("lint chart %s: linted %d charts, want 1", o.Chart, res.TotalChartsLinted)
	}
	return messages, errors.Join(res.Errors...)
}

// buildKustomization is `kubectl kustomize dir`.
func buildKustomization(dir string) ([]byte, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return out, nil
}

// parseValues merges value files and then --set expressions, later ones
// winning, as helm does.
func parseValues(files, sets []string) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("values file: %w", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("values file %s: %w", f, err)
		}
		vals = chartutil.MergeTables(m, vals)
	}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("--set %q: %w", s, err)
		}
	}
	return vals, nil
}

// repoRoot finds the repository from the working directory upwards, so the
// renderer works from the root (go -C) and its tests from their package.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "charts", "handoff", "Chart.yaml")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("find repository root: no charts/handoff/Chart.yaml above %s", dir)
		}
	}
}

// splitDocuments splits a multi-document YAML stream, dropping empty
// documents (a template that renders nothing).
func splitDocuments(stream []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML documents: %w", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("YAML document %q: %w", firstLine(doc), err)
		}
		if len(m) == 0 {
			continue
		}
		docs = append(docs, doc)
	}
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
