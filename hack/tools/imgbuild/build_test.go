package main

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// staticBinary builds the pause command with cgo off: a real static ELF.
func staticBinary(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-o", out, "./pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build static binary: %v\n%s", err, b)
	}
	return out
}

// untar extracts the archive so the OCI layout reader can open it.
func untar(t *testing.T, archive string) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBuildIsReadableAsOCILayoutAndDockerArchive(t *testing.T) {
	bin := staticBinary(t)
	dir := t.TempDir()
	opts := Options{
		Tag:        "handoff:test",
		Output:     filepath.Join(dir, "img.tar"),
		Files:      []File{{Dest: "/nodeagent", Src: bin}, {Dest: "/manager", Src: bin}, {Dest: "/etc/x/y", Src: bin}},
		Entrypoint: []string{"/manager"},
		User:       "65532:65532",
		Labels:     map[string]string{"org.opencontainers.image.title": "handoff"},
		Created:    time.Unix(0, 0).UTC(),
	}
	res, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "docker.io/library/handoff:test" {
		t.Errorf("name = %q, want docker.io/library/handoff:test", res.Name)
	}

	// OCI layout: the index names the image the way containerd's importer reads it.
	p, err := layout.FromPath(untar(t, opts.Output))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[annotationContainerdName] != res.Name ||
		im.Manifests[0].Annotations[annotationRefName] != "test" || im.Manifests[0].Digest != res.Digest {
		t.Fatalf("index = %+v, want one manifest %s named %s", im.Manifests, res.Digest, res.Name)
	}
	img, err := p.Image(res.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/manager"}) || cf.Config.User != "65532:65532" ||
		cf.Config.Labels["org.opencontainers.image.title"] != "handoff" || cf.OS != "linux" ||
		!reflect.DeepEqual(cf.Config.Env, []string{defaultPath}) {
		t.Errorf("config = %+v (os %s)", cf.Config, cf.OS)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && (h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0) {
			t.Errorf("%s: mode %o uid %d gid %d, want 755 root", h.Name, h.Mode, h.Uid, h.Gid)
		}
		names = append(names, h.Name)
	}
	if want := []string{"etc/", "etc/x/", "etc/x/y", "manager", "nodeagent"}; !reflect.DeepEqual(names, want) {
		t.Errorf("layer holds %q, want %q", names, want)
	}

	// docker-archive view of the same tarball: same image.
	tag, _ := name.NewTag("handoff:test")
	dimg, err := tarball.ImageFromPath(opts.Output, &tag)
	if err != nil {
		t.Fatal(err)
	}
	dcf, err := dimg.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	ocf, _ := img.ConfigName()
	if dcf != ocf {
		t.Errorf("docker-archive config %s, OCI config %s: want the same", dcf, ocf)
	}

	// Deterministic: same inputs, same digest.
	opts.Output = filepath.Join(dir, "again.tar")
	again, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest {
		t.Errorf("second build digest %s, first %s: want equal", again.Digest, res.Digest)
	}
}

func TestBuildRefusesDynamicBinary(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatalf("need a dynamically linked /bin/sh for this test: %v", err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	_, err = Build(Options{Tag: "x:y", Output: out, Files: []File{{Dest: "/sh", Src: sh}}})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("err = %v, want dynamically linked", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output %s exists after a refused build", out)
	}
}

func TestBuildWantsExplicitTag(t *testing.T) {
	for _, tag := range []string{"", "handoff", "localhost:5000/handoff"} {
		_, err := Build(Options{Tag: tag, Output: filepath.Join(t.TempDir(), "x.tar"), Files: []File{{Dest: "/a", Src: "/etc/hostname"}}})
		if err == nil || !strings.Contains(err.Error(), "explicit tag") {
			t.Errorf("tag %q: err = %v, want explicit tag", tag, err)
		}
	}
}
