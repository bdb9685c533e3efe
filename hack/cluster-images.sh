#!/usr/bin/env bash
# Builds handoff's container images without a container engine, with the same
# layout as the Dockerfile, into bin/images/:
#
#   handoff:$IMAGE_TAG            /manager /nodeagent /handoffctl, ENTRYPOINT /manager
#   handoff-streamer:$IMAGE_TAG   /streamer, ENTRYPOINT /streamer
#
# both static (CGO_ENABLED=0, -trimpath, -s -w), on an empty base, USER
# 65532:65532, written by hack/tools/imgbuild as OCI tarballs. With --import
# they are also imported into the running local cluster's containerd
# (hack/cluster-up.sh), in the k8s.io namespace the kubelet uses. Pods must
# use imagePullPolicy IfNotPresent or Never: there is no registry to pull from.
#
# Usage: hack/cluster-images.sh [--import]
# Environment: IMAGE_TAG (dev), CONTAINERD_VERSION (2.4.2).
set -euo pipefail

IMAGE_TAG=${IMAGE_TAG:-dev}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/lib.sh"
OUT=$ROOT/bin/images
IMGBUILD=$ROOT/bin/tools/imgbuild/imgbuild
CTR=$ROOT/bin/cluster/containerd-$CONTAINERD_VERSION/ctr
GO=${GO:-go}

IMPORT=0
for a in "$@"; do
	case $a in
	--import) IMPORT=1 ;;
	-h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "cluster-images: unknown argument $a" >&2; exit 2 ;;
	esac
done
log() { printf 'cluster-images: %s\n' "$*" >&2; }
START=$(date +%s)

mkdir -p "$OUT/rootfs" "$(dirname "$IMGBUILD")"
# imgbuild is seconds to build; rebuild it so it always matches hack/tools/imgbuild.
(cd "$ROOT/hack/tools/imgbuild" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -o "$IMGBUILD.tmp" .)
mv -f "$IMGBUILD.tmp" "$IMGBUILD"

# The Dockerfile's build stage, without docker.
for c in manager:./cmd/manager nodeagent:./cmd/nodeagent handoffctl:./cmd/handoffctl streamer:./examples/streamer; do
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/rootfs/.${c%%:*}.tmp" "${c#*:}")
	mv -f "$OUT/rootfs/.${c%%:*}.tmp" "$OUT/rootfs/${c%%:*}"
done

REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
LABELS=(-label "org.opencontainers.image.source=https://github.com/handoff-dev/handoff"
	-label "org.opencontainers.image.version=$IMAGE_TAG" -label "org.opencontainers.image.revision=$REV")
R=$OUT/rootfs
"$IMGBUILD" -tag "handoff:$IMAGE_TAG" -o "$OUT/handoff-$IMAGE_TAG.tar" -entrypoint /manager -user 65532:65532 \
	"${LABELS[@]}" -label "org.opencontainers.image.title=handoff" \
	-file /manager="$R/manager" -file /nodeagent="$R/nodeagent" -file /handoffctl="$R/handoffctl"
"$IMGBUILD" -tag "handoff-streamer:$IMAGE_TAG" -o "$OUT/handoff-streamer-$IMAGE_TAG.tar" -entrypoint /streamer -user 65532:65532 \
	"${LABELS[@]}" -label "org.opencontainers.image.title=handoff-streamer" \
	-file /streamer="$R/streamer"

if [ $IMPORT = 1 ]; then
	[ -S /run/containerd/containerd.sock ] || { log "no containerd socket at /run/containerd/containerd.sock: run hack/cluster-up.sh first"; exit 1; }
	for t in "$OUT/handoff-$IMAGE_TAG.tar" "$OUT/handoff-streamer-$IMAGE_TAG.tar"; do
		"$CTR" -n k8s.io images import "$t"
	done
fi
log "done in $(($(date +%s) - START))s: $OUT/handoff-$IMAGE_TAG.tar $OUT/handoff-streamer-$IMAGE_TAG.tar"
