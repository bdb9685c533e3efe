#!/usr/bin/env bash
# Smoke test of the local cluster, run by hand as root (not part of make test):
# snapshot the host, hack/cluster-up.sh, import handoff's images, run the
# streamer as a hostNetwork pod (non-root, RuntimeDefault seccomp) and read a
# few bytes of a stream from the host, run /handoffctl from the handoff image,
# hack/cluster-down.sh, then check the host is as it was: mounts, iptables
# chains, network interfaces, sysctls, kubepods cgroups, and no process
# running a binary from bin/.
#
# Usage: hack/cluster-smoke.sh     (needs the binaries: hack/cluster-bins.sh)
# Environment: CLUSTER_DIR (/tmp/handoff-cluster), IMAGE_TAG (smoke), STREAM_PORT (18080).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
export CLUSTER_DIR=${CLUSTER_DIR:-/tmp/handoff-cluster}
export IMAGE_TAG=${IMAGE_TAG:-smoke}
PORT=${STREAM_PORT:-18080}
KUBECTL=$ROOT/bin/k8s/v$K8S_VERSION/kubectl
SNAP=$(mktemp -d)
log() { printf 'cluster-smoke: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (it runs hack/cluster-up.sh)"; exit 1; }

# snapshot FILE: the host state cluster-down.sh must restore.
snapshot() {
	(
		# a section with nothing in it is fine: grep/ls failing must not stop the script
		set +e +o pipefail
		echo "## mounts"
		awk '{print $2, $3}' /proc/mounts | sort
		echo "## iptables chains"
		for t in filter nat mangle raw; do iptables -t $t -S 2>/dev/null | grep -E '^-N' | sed "s/^/$t /"; done
		for t in filter nat mangle raw; do ip6tables -t $t -S 2>/dev/null | grep -E '^-N' | sed "s/^/v6 $t /"; done
		echo "## iptables rules"
		iptables-save 2>/dev/null | grep -E '^-A' | sort
		echo "## links"
		ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort
		echo "## netns"
		ls /run/netns 2>/dev/null
		echo "## sysctls"
		sysctl net.ipv4.ip_forward fs.inotify.max_user_instances fs.inotify.max_user_watches vm.overcommit_memory \
			vm.panic_on_oom kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet 2>/dev/null
		echo "## kubepods cgroups"
		find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null | sort
		echo "## processes running bin/"
		for p in /proc/[0-9]*; do
			e=$(readlink "$p/exe" 2>/dev/null) || continue
			case $e in "$ROOT"/bin/*) echo "${p#/proc/} $e" ;; esac
		done
		echo "## host dirs"
		ls -d /var/lib/kubelet /var/lib/containerd /run/containerd /var/log/pods /var/log/containers /var/lib/cni 2>/dev/null
		true
	) >"$1"
}

snapshot "$SNAP/before"
T=$(date +%s.%N)
"$ROOT/hack/cluster-up.sh"
UP=$(awk -v a="$T" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
export KUBECONFIG=$CLUSTER_DIR/kubeconfig
FAIL=0
check() { if "$@"; then log "OK   $CHECK"; else log "FAIL $CHECK"; FAIL=1; fi; }

"$ROOT/hack/cluster-images.sh" --import
"$KUBECTL" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: streamer-smoke}
spec:
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: streamer
    image: handoff-streamer:$IMAGE_TAG
    imagePullPolicy: Never
    args: ["--addr=127.0.0.1:$PORT", "--rate=16384", "--tick=10ms"]
    # the probe dials the node IP unless told: the streamer listens on loopback only
    readinessProbe: {tcpSocket: {host: 127.0.0.1, port: $PORT}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: handoffctl-smoke}
spec:
  restartPolicy: Never
  containers:
  - name: handoffctl
    image: handoff:$IMAGE_TAG
    imagePullPolicy: Never
    command: ["/handoffctl", "--help"]
EOF
CHECK="streamer pod Ready" check "$KUBECTL" wait --for=condition=Ready pod/streamer-smoke --timeout=60s
# Read 64 bytes of a stream from the host, through the node's network.
n=$(curl -sN --max-time 5 "http://127.0.0.1:$PORT/streams/smoke" 2>/dev/null | head -c 64 | wc -c || true)
CHECK="curl from the host read 64 bytes of /streams/smoke (got $n)" check test "$n" = 64
pid=$(pgrep -f "^/streamer --addr=127.0.0.1:$PORT " | head -1 || true)
CHECK="streamer (PID ${pid:-none}) runs as uid 65532" check grep -qE '^Uid:[[:space:]]+65532' "/proc/${pid:-0}/status"
CHECK="streamer (PID ${pid:-none}) runs under a seccomp filter (RuntimeDefault)" check \
	grep -qE '^Seccomp:[[:space:]]+2' "/proc/${pid:-0}/status"
for i in $(seq 60); do
	phase=$("$KUBECTL" get pod handoffctl-smoke -o jsonpath='{.status.phase}')
	case $phase in Succeeded | Failed) break ;; esac
	sleep 0.5
done
CHECK="/handoffctl runs from the handoff image (phase $phase)" check sh -c "'$KUBECTL' logs handoffctl-smoke 2>&1 | grep -qi usage"
"$KUBECTL" get pods -A -o wide

T=$(date +%s.%N)
"$ROOT/hack/cluster-down.sh" || FAIL=1
DOWN=$(awk -v a="$T" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
snapshot "$SNAP/after"
if diff -u "$SNAP/before" "$SNAP/after"; then
	log "OK   host state after cluster-down.sh equals the state before cluster-up.sh"
else
	log "FAIL host state differs after cluster-down.sh (diff above)"
	FAIL=1
fi
rm -rf "$SNAP"
log "bring-up ${UP}s, tear-down ${DOWN}s"
[ $FAIL = 0 ] && log "PASSED" || { log "FAILED"; exit 1; }
