#!/usr/bin/env bash
# Builds every binary a real single-node cluster needs (hack/cluster-up.sh) from
# the Go module proxy; nothing is downloaded from a release page or registry.
#
#   bin/k8s/v$K8S_VERSION/        kube-apiserver, kubectl, etcd (as for envtest) and
#                                 kube-controller-manager, kube-scheduler, kubelet,
#                                 kube-proxy: hack/envtest-bins.sh --cluster, from the
#                                 one wrapper module hack/tools/k8s
#   bin/cluster/containerd-V/     containerd, containerd-shim-runc-v2, ctr
#   bin/cluster/runc-V/           runc, with seccomp (cgo: needs libseccomp-dev)
#   bin/cluster/cni-plugins-V/    bridge, host-local, loopback, portmap
#   bin/cluster/coredns-V/        coredns, static (CGO_ENABLED=0): it runs in an
#                                 empty image, where a cgo binary fails with
#                                 "exec /coredns: no such file or directory"
#   bin/cluster/crictl-V/         crictl: cluster-down.sh removes pods through CRI
#                                 so that the CNI plugins undo their own changes
#   bin/cluster/helm-V/           helm, for installing charts/handoff
#   bin/tools/imgbuild/           imgbuild and the pause binary (hack/tools/imgbuild)
#
# These are built with `go install module/cmd@version`: those modules carry no
# replace directives, so their own go.mod (checked against sum.golang.org) pins
# the build and no wrapper module is needed. Version strings are stamped with
# -X because a module build has no git tags to read them from.
#
# Idempotent: a binary that exists and reports the expected version is kept.
# Each build goes to a temporary directory and is renamed into place, so an
# interrupted build never leaves a half-written binary that looks cached.
#
# Usage: hack/cluster-bins.sh [--force]
# Environment: K8S_VERSION (1.37.2), ETCD_VERSION (3.6.16), CONTAINERD_VERSION
# (2.4.2), RUNC_VERSION (1.5.2), CNI_VERSION (1.10.0), COREDNS_VERSION (1.15.0),
# CRICTL_VERSION (1.37.0), HELM_VERSION (3.22.0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
CB=$ROOT/bin/cluster
GO=${GO:-go}

FORCE=0
for a in "$@"; do
	case $a in
	--force) FORCE=1 ;;
	-h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "cluster-bins: unknown argument $a" >&2; exit 2 ;;
	esac
done

log() { printf 'cluster-bins: %s\n' "$*" >&2; }
START=$(date +%s)

# 1. Kubernetes: the envtest script owns the wrapper module and its ldflags.
"$ROOT/hack/envtest-bins.sh" --cluster $([ $FORCE = 1 ] && echo --force)

# 2. containerd, its runc shim, and ctr (for importing images).
D=$CB/containerd-$CONTAINERD_VERSION
if [ $FORCE = 0 ] && ok "$D/containerd" --version " v$CONTAINERD_VERSION( |\$)" &&
	ok "$D/ctr" --version " v$CONTAINERD_VERSION\$" &&
	ok "$D/containerd-shim-runc-v2" -v "Version: +v$CONTAINERD_VERSION\$"; then
	log "containerd v$CONTAINERD_VERSION present"
else
	# The snapshotters we do not use need C headers or kernel features; overlayfs is enough.
	GOINSTALL_FLAGS="-tags=no_btrfs,no_devmapper,no_zfs" goinstall containerd "$D" \
		"-X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@v$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@v$CONTAINERD_VERSION"
	ok "$D/containerd" --version " v$CONTAINERD_VERSION( |\$)" || { log "$D/containerd does not report v$CONTAINERD_VERSION"; exit 1; }
fi

# 3. runc with seccomp: pods asking for RuntimeDefault need it, and it is cgo.
D=$CB/runc-$RUNC_VERSION
if [ $FORCE = 0 ] && ok "$D/runc" --version "^runc version $RUNC_VERSION\$" && ok "$D/runc" --version "^libseccomp: "; then
	log "runc v$RUNC_VERSION present"
else
	if ! pkg-config --exists libseccomp 2>/dev/null; then
		log "runc needs the libseccomp headers: apt-get install libseccomp-dev pkg-config"
		exit 1
	fi
	GOINSTALL_FLAGS="-tags=seccomp,urfave_cli_no_docs" CGO_ENABLED=1 goinstall runc "$D" \
		"-X main.version=$RUNC_VERSION" "github.com/opencontainers/runc@v$RUNC_VERSION"
	ok "$D/runc" --version "^libseccomp: " || { log "$D/runc was built without seccomp"; exit 1; }
fi

# 4. CNI plugins: a bridge network with host-local IPAM, loopback, and portmap.
D=$CB/cni-plugins-$CNI_VERSION
cni_ok() {
	local p
	for p in bridge host-local loopback portmap; do
		ok "$D/$p" " v$CNI_VERSION\$" || return 1
	done
}
if [ $FORCE = 0 ] && cni_ok; then
	log "CNI plugins v$CNI_VERSION present"
else
	P=github.com/containernetworking/plugins
	CGO_ENABLED=0 goinstall cni-plugins "$D" "-X $P/pkg/utils/buildversion.BuildVersion=v$CNI_VERSION" \
		"$P/plugins/main/bridge@v$CNI_VERSION" "$P/plugins/main/loopback@v$CNI_VERSION" \
		"$P/plugins/ipam/host-local@v$CNI_VERSION" "$P/plugins/meta/portmap@v$CNI_VERSION"
	cni_ok || { log "CNI plugins in $D do not report v$CNI_VERSION"; exit 1; }
fi

# 5. CoreDNS, static: it goes into an image with nothing else in it.
D=$CB/coredns-$COREDNS_VERSION
coredns_ok() {
	ok "$D/coredns" -version "^CoreDNS-$COREDNS_VERSION\$" && "$GO" version -m "$D/coredns" | grep -q 'CGO_ENABLED=0'
}
if [ $FORCE = 0 ] && coredns_ok; then
	log "CoreDNS v$COREDNS_VERSION present"
else
	CGO_ENABLED=0 goinstall coredns "$D" "" "github.com/coredns/coredns@v$COREDNS_VERSION"
	coredns_ok || { log "$D/coredns is not a static CoreDNS $COREDNS_VERSION"; exit 1; }
fi

# 6. crictl and helm.
D=$CB/crictl-$CRICTL_VERSION
if [ $FORCE = 0 ] && ok "$D/crictl" --version "v$CRICTL_VERSION\$"; then
	log "crictl v$CRICTL_VERSION present"
else
	CGO_ENABLED=0 goinstall crictl "$D" "-X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" \
		"sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
	ok "$D/crictl" --version "v$CRICTL_VERSION\$" || { log "$D/crictl does not report v$CRICTL_VERSION"; exit 1; }
fi
D=$CB/helm-$HELM_VERSION
if [ $FORCE = 0 ] && ok "$D/helm" version --short "^v$HELM_VERSION"; then
	log "helm v$HELM_VERSION present"
else
	CGO_ENABLED=0 goinstall helm "$D" "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
		"helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
	ok "$D/helm" version --short "^v$HELM_VERSION" || { log "$D/helm does not report v$HELM_VERSION"; exit 1; }
fi

# 7. The image builder and the pause binary: small, rebuilt every time (seconds).
D=$ROOT/bin/tools/imgbuild
mkdir -p "$D"
(cd "$ROOT/hack/tools/imgbuild" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$D/.imgbuild.tmp" . &&
	CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$D/.pause.tmp" ./pause)
mv -f "$D/.imgbuild.tmp" "$D/imgbuild"
mv -f "$D/.pause.tmp" "$D/pause"

log "done in $(($(date +%s) - START))s"
