// Command imgbuild writes a single-layer OCI image, built from static binaries
// on an empty base, as a tarball that `ctr -n k8s.io images import` and
// `docker load` both accept. The local cluster has no registry and no
// container engine to build with, so this is how handoff's images get there.
//
//	imgbuild -tag handoff:dev -o handoff.tar -entrypoint /manager -user 65532:65532 \
//	    -label org.opencontainers.image.source=https://github.com/handoff-dev/handoff \
//	    -file /manager=bin/manager -file /nodeagent=bin/nodeagent
//
// The output is deterministic: the same files and flags give the same image
// digest (mtimes are SOURCE_DATE_EPOCH, default 0), so re-importing an
// unchanged image is a no-op for containerd.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		opts           Options
		files, labels  listFlag
		envs           listFlag
		entrypoint, cm string
	)
	flag.StringVar(&opts.Tag, "tag", "", "image reference with an explicit tag, e.g. handoff:dev (required)")
	flag.StringVar(&opts.Output, "o", "", "output tarball (required)")
	flag.Var(&files, "file", "DEST=SRC: put file SRC at absolute path DEST in the image (repeatable)")
	flag.StringVar(&entrypoint, "entrypoint", "", "comma-separated entrypoint, e.g. /manager")
	flag.StringVar(&cm, "cmd", "", "comma-separated default arguments")
	flag.StringVar(&opts.User, "user", "", "user[:group] the container runs as")
	flag.Var(&labels, "label", "KEY=VALUE image label (repeatable)")
	flag.Var(&envs, "env", "KEY=VALUE environment variable (repeatable; default PATH only)")
	flag.StringVar(&opts.Arch, "arch", "", "image architecture (default: this machine's)")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	var err error
	if opts.Files, err = parseFiles(files); err != nil {
		fail(err)
	}
	if opts.Labels, err = parseKV("label", labels); err != nil {
		fail(err)
	}
	opts.Env = envs
	opts.Entrypoint = splitList(entrypoint)
	opts.Cmd = splitList(cm)
	if opts.Created, err = sourceDateEpoch(); err != nil {
		fail(err)
	}
	res, err := Build(opts)
	if err != nil {
		fail(err)
	}
	fmt.Printf("imgbuild: wrote %s: %s %s (%d bytes)\n", opts.Output, res.Name, res.Digest, res.Size)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "imgbuild: %v\n", err)
	os.Exit(1)
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// parseFiles turns DEST=SRC flags into files, in flag order.
func parseFiles(specs []string) ([]File, error) {
	var out []File
	for _, s := range specs {
		dest, src, ok := strings.Cut(s, "=")
		if !ok || dest == "" || src == "" {
			return nil, fmt.Errorf("file %q: want DEST=SRC", s)
		}
		out = append(out, File{Dest: dest, Src: src})
	}
	return out, nil
}

func parseKV(what string, specs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", what, s)
		}
		out[k] = v
	}
	return out, nil
}
