#!/usr/bin/env bash
# Runs the real-cluster e2e suite (./test/e2e/cluster) on a throwaway cluster:
#
#   - where Docker runs (and HANDOFF_E2E_LOCAL is not 1): on kind, through
#     hack/kind-e2e.sh;
#   - else on a single-node cluster from binaries on this host (hack/cluster-up.sh),
#     which needs root: it changes iptables, mounts, sysctls and cgroups until
#     hack/cluster-down.sh undoes them, which this script runs on exit, also when
#     a test fails or the run is interrupted.
#
# The local path, phase by phase (each timed, the table printed on exit):
#   bins     hack/cluster-bins.sh: every binary, built from the Go module proxy and
#            cached under bin/ by version (cold: tens of minutes; warm: seconds)
#   up       hack/cluster-up.sh (its kubeconfig: $CLUSTER_DIR/kubeconfig)
#   images   hack/cluster-images.sh --import: handoff:$IMAGE_TAG and
#            handoff-streamer:$IMAGE_TAG into the cluster's containerd, plus the
#            tags handoff-streamer:$IMAGE_TAG-next, -r3 and -r4 of the same image, which the
#            in-place update test sets as target.image, and handoff:$IMAGE_TAG-next, which
#            the agent upgrade test rolls the chart to
#   test     go test -count=1 -timeout 30m -v ./test/e2e/cluster/ [ARGS...]
#   down     hack/cluster-down.sh (skipped with KEEP_CLUSTER=1, or when the
#            cluster was already running before this script: it is not ours)
# After a failure the cluster's own logs are copied into $HANDOFF_E2E_ARTIFACTS,
# beside the suite's dumps (Migrations, Events, manager and agent logs).
#
# Usage: hack/e2e-cluster.sh [GO_TEST_ARGS...]     e.g. hack/e2e-cluster.sh -run TestCluster/InPlace
# Environment: HANDOFF_E2E_LOCAL (0; 1 skips the Docker check), IMAGE_TAG (dev),
# CLUSTER_DIR (/tmp/handoff-cluster), K8S_VERSION (1.37.2), HELM_VERSION (3.22.0),
# CONTAINERD_VERSION (2.4.2), HANDOFF_E2E_ARTIFACTS (${TMPDIR:-/tmp}/handoff-e2e-artifacts),
# KEEP_CLUSTER (0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
log() { printf 'e2e-cluster: %s\n' "$*" >&2; }

if [ "${HANDOFF_E2E_LOCAL:-0}" != 1 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
	log "Docker runs here: using kind (hack/kind-e2e.sh); HANDOFF_E2E_LOCAL=1 uses a local cluster instead"
	exec "$ROOT/hack/kind-e2e.sh" "$@"
fi

export IMAGE_TAG=${IMAGE_TAG:-dev}
export CLUSTER_DIR=${CLUSTER_DIR:-/tmp/handoff-cluster}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
ARTIFACTS=${HANDOFF_E2E_ARTIFACTS:-${TMPDIR:-/tmp}/handoff-e2e-artifacts}
GO=${GO:-go}
CTR=$ROOT/bin/cluster/containerd-$CONTAINERD_VERSION/ctr

if [ "$(id -u)" != 0 ]; then
	log "no Docker here, so the suite needs the local single-node cluster, and that needs root"
	log "(it changes iptables, mounts, sysctls and cgroups until it stops). Run as root, or where Docker runs (kind)."
	exit 1
fi

TIMES=()
PHASE="" PHASE_START=0
phase() {
	local now
	now=$(date +%s)
	[ -n "$PHASE" ] && TIMES+=("$(printf '%-8s %5ds' "$PHASE" $((now - PHASE_START)))")
	PHASE=$1 PHASE_START=$now
	[ -n "$PHASE" ] && log "== $PHASE"
	return 0
}

OURS=0 RC=0
finish() {
	RC=${RC:-$?}
	if [ "$RC" != 0 ] && [ -d "$CLUSTER_DIR/logs" ]; then
		mkdir -p "$ARTIFACTS/cluster-logs"
		cp -a "$CLUSTER_DIR/logs/." "$ARTIFACTS/cluster-logs/" 2>/dev/null || true
		log "the cluster's daemon logs are in $ARTIFACTS/cluster-logs"
	fi
	if [ $OURS = 1 ]; then
		if [ "$KEEP_CLUSTER" = 1 ]; then
			log "KEEP_CLUSTER=1: the cluster stays up (KUBECONFIG=$CLUSTER_DIR/kubeconfig); hack/cluster-down.sh removes it and undoes the host changes"
		else
			phase down
			"$ROOT/hack/cluster-down.sh" || { log "cluster-down failed: run hack/cluster-down.sh again"; [ "$RC" != 0 ] || RC=1; }
		fi
	fi
	phase ""
	log "timings:"
	for l in "${TIMES[@]}"; do log "  $l"; done
	if [ "$RC" = 0 ]; then log "PASS"; else log "FAIL (exit $RC); dumps in $ARTIFACTS"; fi
	exit "$RC"
}
trap 'RC=$?; finish' EXIT
trap 'log "interrupted"; exit 130' INT TERM

mkdir -p "$ARTIFACTS"
phase bins
"$ROOT/hack/cluster-bins.sh"

if [ -S /run/containerd/containerd.sock ] && [ -f "$CLUSTER_DIR/kubeconfig" ]; then
	log "a local cluster is already running ($CLUSTER_DIR): using it, and leaving it up afterwards"
else
	log "starting a local cluster: until it stops, this host has extra iptables chains and rules,"
	log "mounts under /var/lib/kubelet and /run, changed sysctls and kubepods cgroups;"
	log "hack/cluster-down.sh undoes all of it, and runs when this script exits, pass or fail"
	phase up
	OURS=1
	"$ROOT/hack/cluster-up.sh"
fi

phase images
"$ROOT/hack/cluster-images.sh" --import
for tag in next r3 r4; do
	"$CTR" -n k8s.io images tag --force "docker.io/library/handoff-streamer:$IMAGE_TAG" "docker.io/library/handoff-streamer:$IMAGE_TAG-$tag" >/dev/null
done
"$CTR" -n k8s.io images tag --force "docker.io/library/handoff:$IMAGE_TAG" "docker.io/library/handoff:$IMAGE_TAG-next" >/dev/null

phase test
export KUBECONFIG=$CLUSTER_DIR/kubeconfig
export HANDOFF_E2E_KUBECTL=$ROOT/bin/k8s/v$K8S_VERSION/kubectl
export HANDOFF_E2E_HELM=$ROOT/bin/cluster/helm-$HELM_VERSION/helm
export HANDOFF_E2E_IMAGE_REPO=handoff HANDOFF_E2E_IMAGE_TAG=$IMAGE_TAG HANDOFF_E2E_IMAGE_NEXT_TAG=$IMAGE_TAG-next
export HANDOFF_E2E_STREAMER_IMAGE=handoff-streamer:$IMAGE_TAG
export HANDOFF_E2E_STREAMER_NEXT=handoff-streamer:$IMAGE_TAG-next
export HANDOFF_E2E_STREAMER_MORE="handoff-streamer:$IMAGE_TAG-r3 handoff-streamer:$IMAGE_TAG-r4"
export HANDOFF_E2E_ARTIFACTS=$ARTIFACTS
cd "$ROOT"
"$GO" test -count=1 -timeout 30m -v ./test/e2e/cluster/ "$@"
