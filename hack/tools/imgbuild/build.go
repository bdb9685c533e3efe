package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one file of the image's only layer.
type File struct {
	Dest string // absolute path inside the image
	Src  string // path on this machine
}

// Options describe the image to build.
type Options struct {
	Tag        string // reference with an explicit tag
	Output     string // tarball to write
	Files      []File
	Entrypoint []string
	Cmd        []string
	User       string
	Labels     map[string]string
	Env        []string  // default: PATH only, as docker build gives a scratch image
	Arch       string    // default runtime.GOARCH
	Created    time.Time // mtime of every file and the config's created time
}

// Result names what Build wrote.
type Result struct {
	Name   string  // fully qualified reference, as containerd names the image
	Digest v1.Hash // manifest digest
	Size   int64   // bytes of the tarball
}

// defaultPath is what docker build puts in the config of a FROM scratch image.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Annotations containerd's importer reads to name the image; the second is
// the OCI one, which holds the tag only.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// Build writes the image described by o to o.Output (via a temporary file, so
// a failed build leaves nothing that looks finished).
func Build(o Options) (Result, error) {
	var res Result
	if o.Output == "" {
		return res, errors.New("no output file (-o)")
	}
	if len(o.Files) == 0 {
		return res, errors.New("no files (-file)")
	}
	ref, err := parseTag(o.Tag)
	if err != nil {
		return res, err
	}
	res.Name = fullName(ref)
	layerTar, err := layerTar(o.Files, o.Created)
	if err != nil {
		return res, err
	}
	gz, err := gzipBytes(layerTar)
	if err != nil {
		return res, fmt.Errorf("compress layer of %s: %w", o.Tag, err)
	}
	diffID, _, err := v1.SHA256(bytes.NewReader(layerTar))
	if err != nil {
		return res, fmt.Errorf("digest layer of %s: %w", o.Tag, err)
	}
	layer := static.NewLayer(gz, types.OCILayer)

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created:   v1.Time{Time: o.Created},
		CreatedBy: "imgbuild " + strings.Join(dests(o.Files), " "),
	}})
	if err != nil {
		return res, fmt.Errorf("add layer to %s: %w", o.Tag, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return res, fmt.Errorf("config of %s: %w", o.Tag, err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = o.Arch
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Created = v1.Time{Time: o.Created}
	cf.RootFS = v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}}
	env := o.Env
	if len(env) == 0 {
		env = []string{defaultPath}
	}
	cf.Config = v1.Config{Entrypoint: o.Entrypoint, Cmd: o.Cmd, User: o.User, Labels: o.Labels, Env: env}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return res, fmt.Errorf("set config of %s: %w", o.Tag, err)
	}
	// mutate.Time would rewrite the layer; only the config needs the time, set above.
	if res.Digest, err = img.Digest(); err != nil {
		return res, fmt.Errorf("digest of %s: %w", o.Tag, err)
	}
	if res.Size, err = writeArchive(o.Output, ref, res.Name, img, gz); err != nil {
		return res, err
	}
	return res, nil
}

// parseTag accepts a reference only if it names its tag: a silent ":latest"
// would make the kubelet try to pull it (pull policy Always), and there is no
// registry to pull from.
func parseTag(s string) (name.Tag, error) {
	last := s[strings.LastIndex(s, "/")+1:]
	if s == "" || !strings.Contains(last, ":") {
		return name.Tag{}, fmt.Errorf("tag %q: want an explicit tag, e.g. handoff:dev", s)
	}
	t, err := name.NewTag(s)
	if err != nil {
		return name.Tag{}, fmt.Errorf("tag %q: %w", s, err)
	}
	return t, nil
}

// fullName is the name containerd (and so the kubelet) gives the image:
// handoff:dev is docker.io/library/handoff:dev.
func fullName(t name.Tag) string {
	reg := t.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + t.RepositoryStr() + ":" + t.TagStr()
}

func dests(files []File) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.Dest
	}
	return out
}

// layerTar is the uncompressed layer: each file at its destination, owned by
// root, mode 0755 (as a Dockerfile COPY of an executable), sorted by path.
func layerTar(files []File, mtime time.Time) ([]byte, error) {
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Dest < sorted[j].Dest })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	written := map[string]bool{} // parent directories already in the tar
	for i, f := range sorted {
		if !path.IsAbs(f.Dest) || path.Clean(f.Dest) != f.Dest || f.Dest == "/" {
			return nil, fmt.Errorf("file %s: destination must be a clean absolute path", f.Dest)
		}
		if i > 0 && sorted[i-1].Dest == f.Dest {
			return nil, fmt.Errorf("file %s: given twice", f.Dest)
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Dest, err)
		}
		if err := checkStatic(f.Src, data); err != nil {
			return nil, err
		}
		rel := strings.TrimPrefix(f.Dest, "/")
		for _, d := range parentDirs(rel) {
			if written[d] {
				continue
			}
			written[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
				return nil, fmt.Errorf("layer dir %s: %w", d, err)
			}
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", f.Dest, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", f.Dest, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// parentDirs lists the directories above rel, outermost first.
func parentDirs(rel string) []string {
	var out []string
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

// checkStatic refuses a dynamically linked ELF: on an empty base it has no
// loader, and the container dies with "exec /x: no such file or directory",
// which names the binary, not the missing interpreter.
func checkStatic(src string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil // not an ELF file: data, scripts with their own interpreter check
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("file %s is dynamically linked (build it with CGO_ENABLED=0): the image has no loader", src)
		}
	}
	return nil
}

func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeArchive writes an OCI image layout as a tar (oci-layout, index.json,
// blobs/sha256/...) plus a docker-archive manifest.json pointing at the same
// blobs, so both OCI and docker-style importers read it.
func writeArchive(out string, ref name.Tag, full string, img v1.Image, layerGz []byte) (int64, error) {
	manifest, err := img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("manifest of %s: %w", ref, err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return 0, fmt.Errorf("config of %s: %w", ref, err)
	}
	mDigest, mSize, err := v1.SHA256(bytes.NewReader(manifest))
	if err != nil {
		return 0, err
	}
	cDigest, _, err := v1.SHA256(bytes.NewReader(config))
	if err != nil {
		return 0, err
	}
	lDigest, _, err := v1.SHA256(bytes.NewReader(layerGz))
	if err != nil {
		return 0, err
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: types.OCIManifestSchema1,
			Digest:    mDigest,
			Size:      mSize,
			Annotations: map[string]string{
				annotationContainerdName: full,
				annotationRefName:        ref.TagStr(),
			},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return 0, fmt.Errorf("index of %s: %w", ref, err)
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	dockerManifest, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blob(cDigest), RepoTags: []string{strings.TrimPrefix(strings.TrimPrefix(full, "docker.io/"), "library/")}, Layers: []string{blob(lDigest)}}})
	if err != nil {
		return 0, fmt.Errorf("docker manifest of %s: %w", ref, err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())              // no-op once renamed
	if err := tmp.Chmod(0o644); err != nil { // CreateTemp makes it 0600
		tmp.Close()
		return 0, fmt.Errorf("chmod %s: %w", out, err)
	}
	tw := tar.NewWriter(tmp)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
		{"manifest.json", dockerManifest},
		{"blobs/", nil},
		{"blobs/sha256/", nil},
		{blob(cDigest), config},
		{blob(lDigest), layerGz},
		{blob(mDigest), manifest},
	}
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tmp.Close()
			return 0, fmt.Errorf("write %s: %w", out, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			tmp.Close()
			return 0, fmt.Errorf("write %s: %w", out, err)
		}
	}
	if err := tw.Close(); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("write %s: %w", out, err)
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		tmp.Close()
		return 0, fmt.Errorf("write %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return 0, fmt.Errorf("rename to %s: %w", out, err)
	}
	return size, nil
}

// sourceDateEpoch is the reproducible-builds timestamp: SOURCE_DATE_EPOCH if
// set, else the Unix epoch.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}
