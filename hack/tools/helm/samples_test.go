package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestSamples checks that the example app can take part: two hostNetwork
// pods of one node that reach the agent's socket, and a Migration naming
// them.
func TestSamples(t *testing.T) {
	var objs []object
	files, err := filepath.Glob(filepath.Join(root, "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, parseObjects(t, filepath.Base(f), data)...)
	}
	checkImages(t, objs, "")

	// Where the agent of config/default serves its socket.
	var ds appsv1.DaemonSet
	mustFind(t, buildDefaultKustomization(t), "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	socket := ""
	for _, a := range container(t, ds.Spec.Template.Spec, "nodeagent").Args {
		if s, ok := strings.CutPrefix(a, "--socket="); ok {
			socket = s
		}
	}
	if socket == "" {
		t.Fatalf("the node agent has no --socket flag")
	}

	pods := map[string]corev1.Pod{}
	for _, o := range kinds(objs, "Pod") {
		var p corev1.Pod
		o.decode(t, &p)
		pods[p.Name] = p
		checkSamplePod(t, p, socket)
	}

	migs := kinds(objs, "Migration")
	if len(migs) != 1 {
		t.Fatalf("want one Migration sample, have %d", len(migs))
	}
	var mig struct {
		Spec struct {
			Source struct{ Pod, Container string } `json:"source"`
			Target struct{ Pod, Container string } `json:"target"`
		} `json:"spec"`
	}
	if err := yamlUnmarshal(migs[0].doc, &mig); err != nil {
		t.Fatal(err)
	}
	src, ok := pods[mig.Spec.Source.Pod]
	if !ok {
		t.Fatalf("the Migration's source pod %q is not among the samples", mig.Spec.Source.Pod)
	}
	dst, ok := pods[mig.Spec.Target.Pod]
	if !ok {
		t.Fatalf("the Migration's target pod %q is not among the samples", mig.Spec.Target.Pod)
	}
	container(t, src.Spec, mig.Spec.Source.Container)
	tc := container(t, dst.Spec, mig.Spec.Target.Container)
	if !slices.Contains(tc.Args, "--standby") {
		t.Errorf("target %s does not wait in standby: %q", dst.Name, tc.Args)
	}
	// The target must land on the source's node.
	a := dst.Spec.Affinity
	if a == nil || a.PodAffinity == nil || len(a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Fatalf("target %s has no required pod affinity to the source", dst.Name)
	}
	term := a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
	sel := labels.SelectorFromSet(term.LabelSelector.MatchLabels)
	if term.TopologyKey != "kubernetes.io/hostname" || !sel.Matches(labels.Set(src.Labels)) || sel.Matches(labels.Set(dst.Labels)) {
		t.Errorf("target %s affinity %+v does not select exactly the source's node", dst.Name, term)
	}
}

func checkSamplePod(t *testing.T, p corev1.Pod, socket string) {
	t.Helper()
	if !p.Spec.HostNetwork {
		t.Errorf("pod %s is not hostNetwork: its sockets could not move to another pod", p.Name)
	}
	dir := filepath.Dir(socket)
	vol := ""
	for _, v := range p.Spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path == dir {
			vol = v.Name
		}
	}
	if vol == "" {
		t.Errorf("pod %s does not mount the host's %s", p.Name, dir)
	}
	psc := p.Spec.SecurityContext
	for _, c := range p.Spec.Containers {
		env := ""
		for _, e := range c.Env {
			if e.Name == "HANDOFF_SOCKET" {
				env = e.Value
			}
		}
		if env != socket {
			t.Errorf("pod %s container %s: HANDOFF_SOCKET=%q, want %q", p.Name, c.Name, env, socket)
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == vol && m.MountPath == dir }) {
			t.Errorf("pod %s container %s does not mount %s at %s", p.Name, c.Name, vol, dir)
		}
		if c.ReadinessProbe == nil {
			t.Errorf("pod %s container %s has no readiness probe", p.Name, c.Name)
		}
		// A declared port of a hostNetwork pod is a host port: the
		// scheduler would never put source and target on one node.
		if len(c.Ports) != 0 {
			t.Errorf("pod %s container %s declares ports %v", p.Name, c.Name, c.Ports)
		}
		// The socket is root:root 0660 in a 0750 directory.
		uid := int64(-1)
		if psc != nil && psc.RunAsUser != nil {
			uid = *psc.RunAsUser
		}
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			uid = *c.SecurityContext.RunAsUser
		}
		if uid == 0 {
			t.Errorf("pod %s container %s runs as root: it could administer the agent", p.Name, c.Name)
		}
		if psc == nil || !slices.Contains(psc.SupplementalGroups, 0) {
			t.Errorf("pod %s: without group 0 the socket (root:root 0660) refuses uid %d", p.Name, uid)
		}
	}
}

// flagDef matches a flag definition of the standard flag package.
var flagDef = regexp.MustCompile(`flag\.[A-Za-z0-9]+\(\s*(?:&[\w.]+,\s*)?"([a-z0-9-]+)"`)

// TestWorkloadFlagsExist checks every flag the manifests pass against the
// flags cmd/manager and cmd/nodeagent define (in any of their files), so that a renamed flag fails
// here instead of in a crash-looping pod.
func TestWorkloadFlagsExist(t *testing.T) {
	defined := map[string][]string{}
	for _, bin := range []string{"manager", "nodeagent"} {
		files, err := filepath.Glob(filepath.Join(root, "cmd", bin, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range flagDef.FindAllStringSubmatch(string(src), -1) {
				defined["/"+bin] = append(defined["/"+bin], m[1])
			}
		}
		if len(defined["/"+bin]) < 3 {
			t.Fatalf("found only %v in cmd/%s: is the pattern stale?", defined["/"+bin], bin)
		}
	}
	sets := [][]object{
		buildDefaultKustomization(t),
		renderDefault(t),
		renderDefault(t, "manager.agentGrace=45s", "metrics.enabled=false", "manager.leaderElect=false"),
		renderDefault(t, "webhook.certManager.enabled=true"),
		renderDefault(t, "webhook.enabled=false"),
	}
	for _, objs := range sets {
		for _, o := range objs {
			spec, ok := podSpecOf(t, o)
			if !ok || o.Kind == "Pod" {
				continue
			}
			for _, c := range spec.Containers {
				if len(c.Command) != 1 || defined[c.Command[0]] == nil {
					t.Errorf("%s %s: command %q is neither /manager nor /nodeagent", o.Source, o.key(), c.Command)
					continue
				}
				for _, a := range c.Args {
					name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
					if !strings.HasPrefix(a, "-") || !slices.Contains(defined[c.Command[0]], name) {
						t.Errorf("%s %s: %s has no flag %q (defined: %v)", o.Source, o.key(), c.Command[0], a, defined[c.Command[0]])
					}
				}
			}
		}
	}
}
