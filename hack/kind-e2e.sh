#!/usr/bin/env bash
# Runs the real-cluster e2e suite (./test/e2e/cluster) on a throwaway kind
# cluster, on a machine with Docker (GitHub runners, developers' laptops).
# hack/e2e-cluster.sh execs this script when `docker info` works and
# HANDOFF_E2E_LOCAL is not 1; without Docker it uses hack/cluster-up.sh instead.
# Linux only: the suite dials pod IPs, which needs a host route into the kind
# network (a Docker Desktop VM is out of reach).
#
#   tools    kind, built with `go install sigs.k8s.io/kind@v$KIND_VERSION` into
#            bin/cluster/kind-$KIND_VERSION/; kubectl from hack/envtest-bins.sh
#            (bin/k8s/v$K8S_VERSION/); helm built as hack/cluster-bins.sh builds
#            it (bin/cluster/helm-$HELM_VERSION/, the same cache). All cached by
#            version: a binary that reports the expected version is kept.
#   images   docker build of the Dockerfile: handoff:$IMAGE_TAG (default target,
#            manager/nodeagent/handoffctl), handoff-streamer:$IMAGE_TAG (--target
#            streamer) and a second tag of it, handoff-streamer:$IMAGE_TAG-next,
#            for the in-place image-update test
#   cluster  kind create cluster $KIND_CLUSTER: one node, $KIND_NODE_IMAGE, pod
#            subnet $KIND_POD_SUBNET; kubeconfig in $WORK_DIR/kubeconfig, never
#            ~/.kube/config
#   load     kind load docker-image of the five tags (pods use IfNotPresent)
#   route    ip route replace $KIND_POD_SUBNET via the node container's IP, so
#            the suite reaches pod IPs from the host (root: sudo when not root)
#   test     go test -count=1 -timeout 30m -v ./test/e2e/cluster/ [ARGS...]
#            with KUBECONFIG and the HANDOFF_E2E_* variables set
#
# On exit: after a failure, `kind export logs` into $HANDOFF_E2E_ARTIFACTS/kind-logs;
# then the route, the cluster and $WORK_DIR are removed unless KEEP_CLUSTER=1;
# then the time each phase took. The exit code is the first failure's.
#
# Usage: hack/kind-e2e.sh [GO_TEST_ARGS...]      e.g. hack/kind-e2e.sh -run TestInPlace
# Environment: KIND_VERSION (0.33.0), KIND_CLUSTER (handoff-e2e), KIND_NODE_IMAGE
# (kind's image for K8S_VERSION's minor, see NODE_IMAGES below), KIND_POD_SUBNET
# (10.244.0.0/16), K8S_VERSION (1.37.2; kubectl), HELM_VERSION (3.22.0),
# IMAGE_TAG (dev), HANDOFF_E2E_ARTIFACTS (${TMPDIR:-/tmp}/handoff-e2e-artifacts),
# WORK_DIR (a new mktemp -d; holds kubeconfig and kind.yaml), KEEP_CLUSTER (0).
#
# By hand: `hack/kind-e2e.sh` (as a user in the docker group; sudo is asked for
# once, at the start, for the route). To debug, `KEEP_CLUSTER=1 hack/kind-e2e.sh`
# keeps the cluster and the route and prints the variables to rerun go test
# against it, and the two commands that remove them.
set -euo pipefail

KIND_CLUSTER=${KIND_CLUSTER:-handoff-e2e}
KIND_POD_SUBNET=${KIND_POD_SUBNET:-10.244.0.0/16}
IMAGE_TAG=${IMAGE_TAG:-dev}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
CB=$ROOT/bin/cluster
ARTIFACTS=${HANDOFF_E2E_ARTIFACTS:-${TMPDIR:-/tmp}/handoff-e2e-artifacts}
GO=${GO:-go}

# kindest/node images: kind pulls them from Docker Hub. Each kind release
# publishes a set, listed in its release notes, and only the @sha256 digest
# guarantees an image built for that release. These are kind v0.33.0's, by
# Kubernetes minor (the 1.37 one is also kind v0.33.0's built-in default).
NODE_IMAGES="
1.37 kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5
1.36 kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed
1.35 kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0
1.34 kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d
"

case ${1:-} in
-h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
log() { printf 'kind-e2e: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# asroot CMD...: CMD as root, through sudo when we are not root.
asroot() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
sudo_word() { [ "$(id -u)" = 0 ] || printf 'sudo '; }

# Phases and their timings. A phase ends when the next begins; the exit trap
# ends the last one, marked failed when the script fails.
PHASE="" PHASE_START=0 TIMINGS="" START=$(date +%s)
begin() {
	end_phase ""
	PHASE=$1 PHASE_START=$(date +%s)
	log "--- $PHASE"
}
end_phase() {
	[ -n "$PHASE" ] || return 0
	local d=$(($(date +%s) - PHASE_START))
	TIMINGS+=$(printf '\n  %-9s %5ss%s' "$PHASE" "$d" "$1")
	log "$PHASE took ${d}s$1"
	PHASE=""
}

# --- preflight: everything that can fail in a second, before minutes of builds.
[ "$(uname -s)" = Linux ] || die "Linux only: the suite dials pod IPs through a host route into the kind network"
if ! docker info >/dev/null 2>&1; then
	die "docker info failed: this script needs a running Docker daemon this user may use (the docker group, or root).
  Without Docker, run the suite on a local cluster from binaries: HANDOFF_E2E_LOCAL=1 hack/e2e-cluster.sh (root)."
fi
command -v ip >/dev/null || die "missing ip: apt-get install iproute2"
case $IMAGE_TAG in latest) die "IMAGE_TAG=latest makes the kubelet pull (imagePullPolicy Always): pick another tag" ;; esac
if [ -z "${KIND_NODE_IMAGE:-}" ]; then
	[ "$KIND_VERSION" = 0.33.0 ] || die "the node images listed here are kind v0.33.0's: set KIND_NODE_IMAGE for kind v$KIND_VERSION"
	KIND_NODE_IMAGE=$(awk -v m="${K8S_VERSION%.*}" '$1 == m {print $2}' <<<"$NODE_IMAGES")
	[ -n "$KIND_NODE_IMAGE" ] || die "kind v$KIND_VERSION publishes no node image for Kubernetes ${K8S_VERSION%.*}: set KIND_NODE_IMAGE"
fi
if [ "$(id -u)" != 0 ]; then
	log "not root: the route to the pods' subnet needs sudo (asking now, not in an hour)"
	command -v sudo >/dev/null || die "not root and no sudo: run as root or install sudo"
	sudo -v || die "sudo failed: the route to $KIND_POD_SUBNET needs root"
fi
# kind labels its node containers with the cluster's name.
if [ -n "$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$KIND_CLUSTER")" ]; then
	die "a kind cluster named $KIND_CLUSTER exists (kept by KEEP_CLUSTER=1?): kind delete cluster --name $KIND_CLUSTER, or set KIND_CLUSTER"
fi
[ -z "$(ip route show exact "$KIND_POD_SUBNET")" ] ||
	die "the host already routes $KIND_POD_SUBNET ($(ip route show exact "$KIND_POD_SUBNET")): left by a kept cluster? remove it ($(sudo_word)ip route del $KIND_POD_SUBNET) or set KIND_POD_SUBNET"
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)

KIND=$CB/kind-$KIND_VERSION/kind
HELM=$CB/helm-$HELM_VERSION/helm
KUBECTL=$ROOT/bin/k8s/v$K8S_VERSION/kubectl
WORK="" KCFG="" NODE_IP="" CREATED=0 ROUTED=0

cleanup() {
	local rc=$?
	set +e
	if [ "$rc" = 0 ]; then end_phase ""; else end_phase " (failed)"; fi
	if [ "$CREATED" = 1 ]; then
		begin teardown
		if [ "$rc" != 0 ]; then
			log "failed (exit $rc): kind export logs into $ARTIFACTS/kind-logs, objects into $ARTIFACTS/cluster-state.txt"
			"$KIND" export logs "$ARTIFACTS/kind-logs" --name "$KIND_CLUSTER" >/dev/null
			"$KUBECTL" --kubeconfig "$KCFG" get all,events -A -o wide >"$ARTIFACTS/cluster-state.txt" 2>&1
		fi
		if [ "$KEEP_CLUSTER" = 1 ]; then
			log "KEEP_CLUSTER=1: cluster $KIND_CLUSTER and the route to $KIND_POD_SUBNET are kept. To rerun the suite:"
			printf '  %s\n' "cd $ROOT && $(env_line) $GO test -count=1 -timeout 30m -v ./test/e2e/cluster/" >&2
			[ "$ROUTED" = 1 ] && log "to remove the route: $(sudo_word)ip route del $KIND_POD_SUBNET via $NODE_IP"
			log "to remove the cluster: $KIND delete cluster --name $KIND_CLUSTER --kubeconfig $KCFG"
		else
			[ "$ROUTED" = 1 ] && asroot ip route del "$KIND_POD_SUBNET" via "$NODE_IP"
			"$KIND" delete cluster --name "$KIND_CLUSTER" --kubeconfig "$KCFG"
			rm -f "$KCFG" "$WORK/kind.yaml"
			rmdir "$WORK"
		fi
		end_phase ""
	elif [ -n "$WORK" ]; then
		rm -f "$WORK/kind.yaml"
		rmdir "$WORK" 2>/dev/null
	fi
	log "timings:$TIMINGS"
	log "total $(($(date +%s) - START))s; artifacts in $ARTIFACTS"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
env_line() {
	printf 'KUBECONFIG=%s HANDOFF_E2E_HELM=%s HANDOFF_E2E_KUBECTL=%s ' "$KCFG" "$HELM" "$KUBECTL"
	printf 'HANDOFF_E2E_IMAGE_REPO=handoff HANDOFF_E2E_IMAGE_TAG=%s HANDOFF_E2E_IMAGE_NEXT_TAG=%s-next ' "$IMAGE_TAG" "$IMAGE_TAG"
	printf 'HANDOFF_E2E_STREAMER_IMAGE=handoff-streamer:%s HANDOFF_E2E_STREAMER_NEXT=handoff-streamer:%s-next ' "$IMAGE_TAG" "$IMAGE_TAG"
	printf 'HANDOFF_E2E_STREAMER_MORE="handoff-streamer:%s-r3 handoff-streamer:%s-r4" ' "$IMAGE_TAG" "$IMAGE_TAG"
	printf 'HANDOFF_E2E_ARTIFACTS=%s' "$ARTIFACTS"
}

# --- tools
begin tools
D=$CB/kind-$KIND_VERSION
if ok "$KIND" version "^kind v$KIND_VERSION "; then
	log "kind v$KIND_VERSION present"
else
	CGO_ENABLED=0 goinstall kind "$D" "" "sigs.k8s.io/kind@v$KIND_VERSION"
	ok "$KIND" version "^kind v$KIND_VERSION " || die "$KIND does not report v$KIND_VERSION"
fi
# Same command, version stamp and directory as hack/cluster-bins.sh: one cache.
D=$CB/helm-$HELM_VERSION
if ok "$HELM" version --short "^v$HELM_VERSION"; then
	log "helm v$HELM_VERSION present"
else
	CGO_ENABLED=0 goinstall helm "$D" "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
	ok "$HELM" version --short "^v$HELM_VERSION" || die "$HELM does not report v$HELM_VERSION"
fi
# kubectl comes with kube-apiserver and etcd, which make test needs anyway.
"$ROOT/hack/envtest-bins.sh"
[ -x "$KUBECTL" ] || die "hack/envtest-bins.sh did not leave $KUBECTL"

# --- images
begin images
docker build -t "handoff:$IMAGE_TAG" "$ROOT"
docker build --target streamer -t "handoff-streamer:$IMAGE_TAG" "$ROOT"
for tag in next r3 r4; do docker tag "handoff-streamer:$IMAGE_TAG" "handoff-streamer:$IMAGE_TAG-$tag"; done
docker tag "handoff:$IMAGE_TAG" "handoff:$IMAGE_TAG-next" # the agent upgrade test's second tag

# --- cluster
begin cluster
if [ -n "${WORK_DIR:-}" ]; then
	WORK=$WORK_DIR
	mkdir -p "$WORK"
else
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/handoff-kind.XXXXXX")
fi
KCFG=$WORK/kubeconfig
rm -f "$KCFG" # kind would merge into a stale one
cat >"$WORK/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: $KIND_POD_SUBNET
nodes:
- role: control-plane
EOF
CREATED=1 # from here on the exit trap deletes the cluster, even a half-created one
"$KIND" create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --config "$WORK/kind.yaml" \
	--kubeconfig "$KCFG" --wait 3m
"$KUBECTL" --kubeconfig "$KCFG" wait --for=condition=Ready nodes --all --timeout=2m
"$KUBECTL" --kubeconfig "$KCFG" get nodes -o wide

# --- load
begin load
"$KIND" load docker-image --name "$KIND_CLUSTER" \
	"handoff:$IMAGE_TAG" "handoff:$IMAGE_TAG-next" "handoff-streamer:$IMAGE_TAG" "handoff-streamer:$IMAGE_TAG-next" \
	"handoff-streamer:$IMAGE_TAG-r3" "handoff-streamer:$IMAGE_TAG-r4"

# --- route
begin route
NODE=$("$KIND" get nodes --name "$KIND_CLUSTER" | head -n1)
NODE_IP=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$NODE" | awk '{print $1}')
[ -n "$NODE_IP" ] || die "no IPv4 address for the node container $NODE"
ROUTED=1
asroot ip route replace "$KIND_POD_SUBNET" via "$NODE_IP"
log "host route: $(ip route show exact "$KIND_POD_SUBNET")"

# --- test
begin test
export KUBECONFIG=$KCFG HANDOFF_E2E_HELM=$HELM HANDOFF_E2E_KUBECTL=$KUBECTL \
	HANDOFF_E2E_IMAGE_REPO=handoff HANDOFF_E2E_IMAGE_TAG=$IMAGE_TAG HANDOFF_E2E_IMAGE_NEXT_TAG=$IMAGE_TAG-next \
	HANDOFF_E2E_STREAMER_IMAGE=handoff-streamer:$IMAGE_TAG \
	HANDOFF_E2E_STREAMER_NEXT=handoff-streamer:$IMAGE_TAG-next \
	HANDOFF_E2E_STREAMER_MORE="handoff-streamer:$IMAGE_TAG-r3 handoff-streamer:$IMAGE_TAG-r4" \
	HANDOFF_E2E_ARTIFACTS=$ARTIFACTS
log "$(env_line)"
cd "$ROOT"
"$GO" test -count=1 -timeout 30m -v ./test/e2e/cluster/ "$@"
