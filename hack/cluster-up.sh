#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine, without
# Docker or systemd, from the binaries hack/cluster-bins.sh built: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, containerd (+ runc,
# CNI bridge), kubelet, kube-proxy (iptables mode) and CoreDNS. Every daemon is
# started in the background with its PID in $CLUSTER_DIR/run/<name>.pid and its
# log in $CLUSTER_DIR/logs/<name>.log; hack/cluster-down.sh stops them by PID
# and undoes every change to the host. Needs root.
#
# The admin kubeconfig is $CLUSTER_DIR/kubeconfig. Images: there is no
# registry; import with `hack/cluster-images.sh --import` and use
# imagePullPolicy IfNotPresent/Never.
#
# Usage: hack/cluster-up.sh
# Environment: CLUSTER_DIR (/tmp/handoff-cluster), NODE_NAME (hostname),
# NODE_IP (source address of the default route), K8S_VERSION, CONTAINERD_VERSION,
# RUNC_VERSION, CNI_VERSION, COREDNS_VERSION, CRICTL_VERSION (as cluster-bins.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
C=${CLUSTER_DIR:-/tmp/handoff-cluster}
KB=$ROOT/bin/k8s/v$K8S_VERSION
CTRD=$ROOT/bin/cluster/containerd-$CONTAINERD_VERSION
RUNC=$ROOT/bin/cluster/runc-$RUNC_VERSION/runc
CNIBIN=$ROOT/bin/cluster/cni-plugins-$CNI_VERSION
COREDNS=$ROOT/bin/cluster/coredns-$COREDNS_VERSION/coredns
IMGBUILD=$ROOT/bin/tools/imgbuild
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:v$COREDNS_VERSION
SERVICE_CIDR=10.0.0.0/24 API_SERVICE_IP=10.0.0.1 DNS_SERVICE_IP=10.0.0.10 POD_CIDR=10.88.0.0/16

case ${1:-} in
-h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "cluster-up: unknown argument $1" >&2; exit 2 ;;
esac
log() { printf 'cluster-up: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root: it starts containerd and the kubelet and changes iptables, mounts and sysctls (run it as root)"
# The state lives under absolute paths that end up in configs and mount points.
case $C in /*) ;; *) die "CLUSTER_DIR must be an absolute path, not $C" ;; esac

# --- preflight: binaries, tools, and nothing of another cluster in the way.
for b in "$KB"/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl} \
	"$CTRD"/{containerd,containerd-shim-runc-v2,ctr} "$RUNC" "$CNIBIN"/{bridge,host-local,loopback,portmap} \
	"$COREDNS" "$ROOT/bin/cluster/crictl-$CRICTL_VERSION/crictl" "$IMGBUILD"/{imgbuild,pause}; do
	[ -x "$b" ] || die "missing $b: run hack/cluster-bins.sh first"
done
for t in iptables ip6tables ip openssl curl mount umount sysctl; do
	command -v "$t" >/dev/null || die "missing $t: apt-get install iptables iproute2 openssl curl"
done
for f in "$C"/run/*.pid; do
	[ -f "$f" ] || continue
	if kill -0 "$(cat "$f")" 2>/dev/null; then
		die "a cluster is already running from $C ($(basename "$f" .pid) is PID $(cat "$f")): run hack/cluster-down.sh first"
	fi
	die "$C holds state of a stopped or failed cluster: run hack/cluster-down.sh first"
done
# Paths the cluster creates on the host; they must not exist yet, so that
# cluster-down.sh can remove them without deleting someone else's.
HOST_DIRS="/var/lib/kubelet /var/lib/containerd /run/containerd /var/log/pods /var/log/containers /var/lib/cni /run/netns"
for d in $HOST_DIRS; do
	[ ! -e "$d" ] || die "$d exists (another container runtime or kubelet, or a cluster-down.sh that did not finish): not touching it"
done
for port in 2379 2380 6443 10250 10257 10259; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use on 127.0.0.1"; fi
done
ip link show cni0 >/dev/null 2>&1 && die "a network interface cni0 already exists"

NODE=${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
NODE_IP=${NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')}
[ -n "$NODE_IP" ] || die "cannot find this machine's IPv4 address (no default route?): set NODE_IP"

# sysctls written by this script, the kubelet and kube-proxy; cluster-down.sh restores them.
SYSCTLS="net.ipv4.ip_forward fs.inotify.max_user_instances fs.inotify.max_user_watches
vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables"

cat >&2 <<EOF
cluster-up: about to change this host (hack/cluster-down.sh undoes all of it):
  processes  etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy,
             containerd-shim-runc-v2 + pods (pause, CoreDNS); PIDs in $C/run
  sysctls    net.ipv4.ip_forward=1, fs.inotify.max_user_{instances,watches} (this script);
             vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.* (kubelet);
             net.ipv4.conf.all.route_localnet, nf_conntrack_* (kube-proxy); originals saved in $C/run/sysctl.orig
  iptables   KUBE-* chains in filter/nat/mangle (kubelet, kube-proxy), CNI-* chains in nat (bridge masquerade),
             and the jumps to them from INPUT/OUTPUT/FORWARD/PREROUTING/POSTROUTING, for IPv4 and IPv6
  network    bridge cni0 ($POD_CIDR), one veth per pod, network namespaces in /run/netns
  mounts     overlayfs and tmpfs under /run/containerd and /var/lib/containerd, volumes under
             /var/lib/kubelet, netns bind mounts under /run/netns
  cgroups    kubepods* under each cgroup hierarchy in /sys/fs/cgroup (kubelet, cgroupfs driver)
  dirs       $(echo $HOST_DIRS) (must not exist now; removed by cluster-down.sh)
  node       $NODE, IP $NODE_IP; API https://127.0.0.1:6443; kubeconfig $C/kubeconfig
EOF

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
mark() { log "$(printf '%-24s' "$1") $(elapsed)"; echo "$1 $(elapsed)" >>"$C/logs/up-times.txt"; }

mkdir -p "$C"/{run,logs,pki,conf,data,cni/net.d,cni/cache,images}
: >"$C/logs/up-times.txt"
# Record what we create before creating it, so that cluster-down.sh cleans up
# after a bring-up that fails half way.
echo "$HOST_DIRS" >"$C/run/host-dirs"
for k in $SYSCTLS; do
	v=$(sysctl -n "$k" 2>/dev/null) || continue
	printf '%s = %s\n' "$k" "$(tr '\t' ' ' <<<"$v")"
done >"$C/run/sysctl.orig"
# cgroups that exist now are not ours.
find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name 'kubepods*' >"$C/run/cgroups.before" 2>/dev/null || true

# start NAME BIN ARGS...: runs BIN in its own session with its log, PID in run/NAME.pid.
start() {
	local n=$1
	shift
	# setsid without fork: $! is the daemon itself, so the PID file names it.
	setsid "$@" >"$C/logs/$n.log" 2>&1 </dev/null &
	echo $! >"$C/run/$n.pid"
}
# waitfor WHAT TIMEOUT CMD...: polls CMD every 0.2s until it succeeds.
waitfor() {
	local what=$1 timeout=$2 deadline
	shift 2
	deadline=$(($(date +%s) + timeout))
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt $deadline ] || die "timed out after ${timeout}s waiting for $what (logs in $C/logs)"
		sleep 0.2
	done
	mark "$what"
}

# --- host settings
sysctl -qw net.ipv4.ip_forward=1 fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=524288

# --- PKI: a CA, the API server's serving cert, a client cert per component.
P=$C/pki
(
	cd "$P"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj "/CN=handoff-cluster-ca" 2>/dev/null
	openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 365 -subj "/CN=front-proxy-ca" 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	# sign NAME CN O SAN USAGE [CA]
	sign() {
		local name=$1 cn=$2 o=$3 san=$4 usage=$5 ca=${6:-ca} subj="/CN=$2"
		[ -n "$o" ] && subj="/O=$o/CN=$cn"
		openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
		{
			echo "basicConstraints=CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$usage"
			[ -z "$san" ] || echo "subjectAltName=$san"
		} >"$name.ext"
		openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$name.crt" -days 365 -extfile "$name.ext" 2>/dev/null
		rm -f "$name.csr" "$name.ext"
	}
	sign apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP" serverAuth
	sign apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
	sign front-proxy-client front-proxy-client "" "" clientAuth front-proxy-ca
	sign admin kubernetes-admin system:masters "" clientAuth
	sign controller-manager system:kube-controller-manager "" "" clientAuth
	sign scheduler system:kube-scheduler "" "" clientAuth
	sign kubelet "system:node:$NODE" system:nodes "" clientAuth
	sign kubelet-serving "$NODE" "" "DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP" serverAuth
	sign kube-proxy system:kube-proxy "" "" clientAuth
)
# kubeconfig FILE CERT: a kubeconfig for https://127.0.0.1:6443 with pki/CERT.{crt,key}.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: handoff
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$P/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$P/$2.crt", client-key: "$P/$2.key"}
contexts:
- name: handoff
  context: {cluster: handoff, user: $2}
current-context: handoff
EOF
}
for u in controller-manager scheduler kubelet kube-proxy; do kubeconfig "$C/conf/$u.kubeconfig" $u; done
kubeconfig "$C/kubeconfig.tmp" admin
mark certs

# --- configs
cat >"$C/conf/containerd.toml" <<EOF
# containerd 2.x (config version 4): only what differs from the defaults.
version = 4
root = '/var/lib/containerd'
state = '/run/containerd'
[grpc]
  address = '/run/containerd/containerd.sock'
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      # built and imported by cluster-up.sh: no registry is reachable
      sandbox = '$PAUSE_IMAGE'
  [plugins.'io.containerd.cri.v1.runtime']
    # No CAP_SYS_RESOURCE on this kind of VM: runc cannot lower oom_score_adj
    # (pause asks for -998) and every sandbox fails with "nsexec: failed to
    # update /proc/self/oom_score_adj: Permission denied". Clamp to containerd's own.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$RUNC'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      # the plugins and their config stay in the repo's bin/ and CLUSTER_DIR, not /opt/cni and /etc/cni
      bin_dirs = ['$CNIBIN']
      conf_dir = '$C/cni/net.d'
EOF
cat >"$C/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "handoff-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$C/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
cat >"$C/conf/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false    # the host is cgroup v1: kubelet >= 1.35 refuses it unless told
cgroupDriver: cgroupfs # no systemd
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$P/kubelet-serving.crt"
tlsPrivateKeyFile: "$P/kubelet-serving.key"
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: /etc/resolv.conf
failSwapOn: false
# a shared dev machine: do not evict or garbage-collect images on a full-ish disk
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
cat >"$C/conf/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$C/conf/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
conntrack: {maxPerCore: 0} # leave nf_conntrack_max alone
EOF

# --- images the cluster itself needs (a few seconds; deterministic, so re-imports are no-ops)
"$IMGBUILD/imgbuild" -tag "$PAUSE_IMAGE" -o "$C/images/pause.tar" -entrypoint /pause -user 65535:65535 \
	-file /pause="$IMGBUILD/pause" >/dev/null
"$IMGBUILD/imgbuild" -tag "$COREDNS_IMAGE" -o "$C/images/coredns.tar" -entrypoint /coredns \
	-file /coredns="$COREDNS" >/dev/null
mark images-built

export KUBECONFIG=$C/kubeconfig.tmp
KUBECTL=$KB/kubectl

# --- daemons
start etcd "$KB/etcd" --name default --data-dir "$C/data/etcd" --unsafe-no-fsync \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
# containerd needs nothing from the control plane: start it at once. The shim
# finds runc through BinaryName, but containerd itself looks for the shim in PATH.
start containerd env PATH="$CTRD:$PATH" "$CTRD/containerd" --config "$C/conf/containerd.toml"
waitfor etcd 30 curl -sf http://127.0.0.1:2381/health

start kube-apiserver "$KB/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
	--advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
	--tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
	--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
	--service-cluster-ip-range=$SERVICE_CIDR --authorization-mode=Node,RBAC \
	--requestheader-client-ca-file="$P/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
	--enable-admission-plugins=NodeRestriction --allow-privileged=true --profiling=false
waitfor containerd 30 test -S /run/containerd/containerd.sock
for t in pause coredns; do
	"$CTRD/ctr" -n k8s.io images import "$C/images/$t.tar" >>"$C/logs/import.log" 2>&1 ||
		die "ctr import of $C/images/$t.tar failed: see $C/logs/import.log"
done
mark images-imported
waitfor kube-apiserver 60 "$KUBECTL" get --raw /readyz

start kube-controller-manager "$KB/kube-controller-manager" --kubeconfig="$C/conf/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$C/conf/controller-manager.kubeconfig" --authorization-kubeconfig="$C/conf/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
	--service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
	--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
	--service-cluster-ip-range=$SERVICE_CIDR
start kube-scheduler "$KB/kube-scheduler" --kubeconfig="$C/conf/scheduler.kubeconfig" \
	--authentication-kubeconfig="$C/conf/scheduler.kubeconfig" --authorization-kubeconfig="$C/conf/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false
start kubelet "$KB/kubelet" --config="$C/conf/kubelet.yaml" --kubeconfig="$C/conf/kubelet.kubeconfig" \
	--node-ip="$NODE_IP" --hostname-override="$NODE" --v=1
start kube-proxy "$KB/kube-proxy" --config="$C/conf/kube-proxy.yaml"
waitfor node-ready 120 "$KUBECTL" wait --for=condition=Ready "node/$NODE" --timeout=1s
waitfor default-serviceaccount 60 "$KUBECTL" -n default get serviceaccount default

# --- CoreDNS
"$KUBECTL" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        forward . /etc/resolv.conf
        cache 30
        loop
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 10}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes:
      - {name: config, configMap: {name: coredns}}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_SERVICE_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
waitfor coredns-ready 120 "$KUBECTL" -n kube-system rollout status deploy/coredns --timeout=1s

# Publish the kubeconfig last: its presence means the cluster is usable.
mv -f "$C/kubeconfig.tmp" "$C/kubeconfig"
log "up in $(elapsed): export KUBECONFIG=$C/kubeconfig; PATH=$KB:\$PATH"
KUBECONFIG=$C/kubeconfig "$KUBECTL" get nodes -o wide
