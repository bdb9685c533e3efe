# shellcheck shell=bash
# Sourced by the hack/ scripts, after they set ROOT: the one place the pinned
# versions live (each overridable from the environment, and exported so that
# the scripts one calls agree), and the helpers that build and check the
# binaries cached under bin/ by version. The Makefile reads its versions
# from here too.

: "${K8S_VERSION:=1.37.2}"     # kube-apiserver, kubectl, kubelet, ... (hack/tools/k8s)
: "${ETCD_VERSION:=3.6.16}"
: "${CONTAINERD_VERSION:=2.4.2}"
: "${RUNC_VERSION:=1.5.2}"
: "${CNI_VERSION:=1.10.0}"
: "${COREDNS_VERSION:=1.15.0}"
: "${CRICTL_VERSION:=1.37.0}"
: "${HELM_VERSION:=3.22.0}"
: "${KIND_VERSION:=0.33.0}"
export K8S_VERSION ETCD_VERSION CONTAINERD_VERSION RUNC_VERSION CNI_VERSION COREDNS_VERSION CRICTL_VERSION HELM_VERSION KIND_VERSION

# ok BIN ARGS... PATTERN: BIN exists, runs, and its output matches PATTERN
# (an extended regular expression).
ok() {
	local bin=$1 pattern=${*: -1} out
	[ -x "$bin" ] || return 1
	set -- "${@:2:$#-2}"
	out=$("$bin" "$@" 2>&1) || return 1
	grep -Eq -- "$pattern" <<<"$out"
}

# goinstall NAME DIR LDFLAGS PKG@VERSION...: go install into a temporary GOBIN
# under $CB, then move each binary into DIR, so that an interrupted build never
# leaves a half-written binary that looks cached. Extra go flags come from
# $GOINSTALL_FLAGS; the caller sets CB, GO and log, and may prefix the call
# with CGO_ENABLED=0 or 1.
goinstall() {
	local name=$1 dir=$2 ldf=$3 tmp s f
	shift 3
	tmp=$CB/.tmp-$name
	rm -rf "$tmp"
	mkdir -p "$tmp" "$dir"
	log "building $name (cold: a minute or two; warm: seconds)"
	s=$(date +%s)
	# shellcheck disable=SC2086 # GOINSTALL_FLAGS is a list of flags
	GOBIN=$tmp "$GO" install -trimpath ${GOINSTALL_FLAGS:-} -ldflags "-s -w $ldf" "$@"
	for f in "$tmp"/*; do mv -f "$f" "$dir/"; done
	rmdir "$tmp"
	log "$name took $(($(date +%s) - s))s"
}
