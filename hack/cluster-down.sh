#!/usr/bin/env bash
# Tears down the cluster of hack/cluster-up.sh and undoes its changes to the
# host: stops every daemon by the PID in $CLUSTER_DIR/run (checking the PID
# still runs the binary it started), removes the pods through CRI so the CNI
# plugins undo their own network changes, kills any shim left over, unmounts
# what containerd and the kubelet mounted, removes the KUBE-*/CNI-* iptables
# chains, cni0, the kubepods cgroups and the host directories cluster-up.sh
# created, and restores the sysctls it saved. Safe to run twice and after a
# failed bring-up. Keeps $CLUSTER_DIR/logs; deletes the rest of $CLUSTER_DIR's
# state (etcd data, certificates, configs). Needs root.
#
# Usage: hack/cluster-down.sh
# Environment: CLUSTER_DIR (/tmp/handoff-cluster), K8S_VERSION, CONTAINERD_VERSION, CRICTL_VERSION.
set -uo pipefail # not -e: one cleanup step failing must not skip the rest

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
C=${CLUSTER_DIR:-/tmp/handoff-cluster}
KB=$ROOT/bin/k8s/v$K8S_VERSION
CTRD=$ROOT/bin/cluster/containerd-$CONTAINERD_VERSION
CRICTL=$ROOT/bin/cluster/crictl-$CRICTL_VERSION/crictl
SOCK=/run/containerd/containerd.sock

case ${1:-} in
-h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "cluster-down: unknown argument $1" >&2; exit 2 ;;
esac
log() { printf 'cluster-down: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root: it stops root daemons and undoes iptables, mounts and sysctls (run it as root)"; exit 1; }
case $C in /*) ;; *) log "CLUSTER_DIR must be an absolute path, not $C"; exit 1 ;; esac
T0=$(date +%s)
FAILED=0

# exe_of PID: the binary a process runs ("" if gone).
exe_of() { readlink "/proc/$1/exe" 2>/dev/null | sed 's/ (deleted)$//'; }

# stop NAME: SIGTERM the PID in run/NAME.pid, SIGKILL after 10s. A PID that now
# runs some other binary (recycled) is left alone.
stop() {
	local n=$1 f=$C/run/$1.pid pid exe i
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	exe=$(exe_of "$pid")
	case $exe in
	"") ;;
	"$KB"/* | "$CTRD"/*)
		kill "$pid" 2>/dev/null
		for i in $(seq 50); do
			[ -n "$(exe_of "$pid")" ] || break
			sleep 0.2
		done
		if [ -n "$(exe_of "$pid")" ]; then
			log "$n (PID $pid) did not stop on SIGTERM within 10s: SIGKILL"
			kill -9 "$pid" 2>/dev/null
		fi
		log "stopped $n (PID $pid)"
		;;
	*) log "PID $pid of $n now runs $exe, not ours: leaving it" ;;
	esac
	rm -f "$f"
}

# 1. The node agents first, so nothing recreates pods or rules behind us.
stop kube-proxy
stop kubelet
stop kube-scheduler
stop kube-controller-manager

# 2. Pods through CRI: stopping a sandbox runs CNI DEL (veth, IPAM, masquerade rules).
if [ -S $SOCK ] && [ -x "$CRICTL" ] && [ -f "$C/run/containerd.pid" ]; then
	CRI=("$CRICTL" --runtime-endpoint unix://$SOCK --timeout 30s)
	pods=$("${CRI[@]}" pods -q 2>/dev/null)
	if [ -n "$pods" ]; then
		# shellcheck disable=SC2086 # one argument per pod
		"${CRI[@]}" stopp $pods >/dev/null 2>&1 || { log "crictl stopp failed"; FAILED=1; }
		"${CRI[@]}" rmp -a -f >/dev/null 2>&1 || { log "crictl rmp failed"; FAILED=1; }
		log "removed $(wc -w <<<"$pods") pod(s)"
	fi
fi
stop containerd

# 3. Shims (and their containers) that outlived containerd: only processes
# running OUR shim binary, by PID, then what is left in the kubepods cgroups.
for p in /proc/[0-9]*; do
	[ "$(exe_of "${p#/proc/}")" = "$CTRD/containerd-shim-runc-v2" ] || continue
	log "killing leftover shim PID ${p#/proc/}"
	kill -9 "${p#/proc/}" 2>/dev/null
done
kubepods_procs() { cat /sys/fs/cgroup/pids/kubepods*/{,*/,*/*/,*/*/*/}cgroup.procs 2>/dev/null; }
for pid in $(kubepods_procs); do
	log "killing leftover container process $pid ($(exe_of "$pid"))"
	kill -9 "$pid" 2>/dev/null
done

stop kube-apiserver
stop etcd

# 4. iptables: kube-proxy's own cleanup, then whatever KUBE-*/CNI-* remains
# (kubelet's KUBE-FIREWALL/KUBE-KUBELET-CANARY, CNI masquerade of a pod whose DEL did not run).
if [ -f "$C/run/sysctl.orig" ] && [ -x "$KB/kube-proxy" ]; then
	"$KB/kube-proxy" --cleanup >"$C/logs/kube-proxy-cleanup.log" 2>&1 || true
fi
for ipt in iptables ip6tables; do
	command -v $ipt >/dev/null || continue
	for tb in filter nat mangle; do
		# rules in the built-in chains that jump to ours
		while read -r rule; do
			eval "$ipt -t $tb $rule" || FAILED=1
		done < <($ipt -t $tb -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' | sed 's/^-A /-D /')
		chains=$($ipt -t $tb -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}')
		for ch in $chains; do $ipt -t $tb -F "$ch"; done
		for ch in $chains; do $ipt -t $tb -X "$ch" || { log "could not delete $ipt -t $tb chain $ch"; FAILED=1; }; done
	done
done

# 5. Network: veths still on the bridge (normally gone with the pods' netns), then the bridge.
for l in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
	ip link del "$l" 2>/dev/null && log "deleted leftover $l"
done
ip link del cni0 2>/dev/null && log "deleted interface cni0"

# 6. Mounts under our host dirs, deepest first.
HOST_DIRS=$(cat "$C/run/host-dirs" 2>/dev/null)
if [ -n "$HOST_DIRS" ]; then
	re=$(sed 's/ \+/|/g; s/^/^(/; s/$/)(\/|$)/' <<<"$HOST_DIRS")
	for pass in 1 2 3; do
		mounts=$(awk '{print $2}' /proc/mounts | grep -E "$re" | sort -r)
		[ -n "$mounts" ] || break
		for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
	done
	left=$(awk '{print $2}' /proc/mounts | grep -E "$re")
	[ -z "$left" ] || { log "still mounted: $left"; FAILED=1; }
	for d in $HOST_DIRS; do
		[ -e "$d" ] || continue
		rm -rf --one-file-system "$d" && log "removed $d" || { log "could not remove $d"; FAILED=1; }
	done
fi

# 7. cgroups the kubelet created (cgroupfs driver), deepest first; empty by now.
for h in /sys/fs/cgroup/*/; do
	for cg in $(find "$h" -mindepth 1 -maxdepth 1 -type d -name 'kubepods*' 2>/dev/null); do
		grep -qxF "${cg%/}" "$C/run/cgroups.before" 2>/dev/null && continue
		find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
		[ ! -d "$cg" ] || { log "could not remove cgroup $cg"; FAILED=1; }
	done
done

# 8. sysctls back to what they were before cluster-up.sh.
if [ -f "$C/run/sysctl.orig" ]; then
	while IFS= read -r line; do
		k=${line%% = *} v=${line#* = }
		[ "$(sysctl -n "$k" 2>/dev/null | tr '\t' ' ')" = "$v" ] && continue
		sysctl -qw "$k=$v" >/dev/null 2>&1 && log "restored $k = $v" || { log "could not restore $k = $v"; FAILED=1; }
	done <"$C/run/sysctl.orig"
fi

# 9. Our state, keeping the logs for a post-mortem.
if [ -d "$C" ]; then
	for e in "$C"/*; do
		[ "$e" = "$C/logs" ] || [ ! -e "$e" ] || rm -rf "$e"
	done
fi

# What is left of ours, if anything.
left=$(awk '{print $2}' /proc/mounts | grep -E '^(/var/lib/kubelet|/var/lib/containerd|/run/containerd|/run/netns)')
[ -z "$left" ] || { log "mounts left: $left"; FAILED=1; }
for ipt in iptables ip6tables; do
	n=$($ipt-save 2>/dev/null | grep -cE '^:(KUBE|CNI)-|-j (KUBE|CNI)-')
	[ "$n" = 0 ] || { log "$ipt: $n KUBE-/CNI- chains or rules left"; FAILED=1; }
done
if [ $FAILED = 0 ]; then
	log "down in $(($(date +%s) - T0))s; host clean (logs kept in $C/logs)"
else
	log "down in $(($(date +%s) - T0))s with errors above"
	exit 1
fi
