#!/usr/bin/env bash
# Copies what `make manifests` generates into the Helm chart, which cannot
# read files outside its own directory:
#   config/crd/bases/*.yaml          -> charts/handoff/files/crds/
#   config/rbac/manager/role.yaml    -> charts/handoff/files/rbac/manager-role.yaml
#   config/rbac/nodeagent/role.yaml  -> charts/handoff/files/rbac/nodeagent-role.yaml
# The chart's templates read these copies (templates/crds.yaml, rbac.yaml).
# Run it after `make manifests`; commit the copies with the sources.
#
#   hack/sync-chart-crds.sh          update the copies
#   hack/sync-chart-crds.sh --check  change nothing; exit 1 and list what is
#                                    stale if a copy differs from its source,
#                                    is missing, or has no source any more
set -euo pipefail

usage() { echo "usage: $0 [--check]" >&2; exit 2; }
check=0
case "${1-}" in
  "") ;;
  --check) check=1 ;;
  *) usage ;;
esac
[ $# -le 1 ] || usage

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
files=$root/charts/handoff/files

# Pairs of source and copy, relative to the repository root.
pairs=()
shopt -s nullglob
crds=("$root"/config/crd/bases/*.yaml)
if [ ${#crds[@]} -eq 0 ]; then
  echo "sync-chart-crds: no CRDs in config/crd/bases (run make manifests)" >&2
  exit 1
fi
for src in "${crds[@]}"; do
  pairs+=("config/crd/bases/$(basename "$src")" "charts/handoff/files/crds/$(basename "$src")")
done
pairs+=(config/rbac/manager/role.yaml charts/handoff/files/rbac/manager-role.yaml)
pairs+=(config/rbac/nodeagent/role.yaml charts/handoff/files/rbac/nodeagent-role.yaml)

stale=0
wanted=" "  # space-separated copies, for bash 3 (no associative arrays)
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
  src=${pairs[i]} dst=${pairs[i + 1]}
  wanted="$wanted$dst "
  if [ ! -f "$root/$src" ]; then
    echo "sync-chart-crds: $src is missing (run make manifests)" >&2
    exit 1
  fi
  if cmp -s "$root/$src" "$root/$dst"; then
    continue
  fi
  if [ $check -eq 1 ]; then
    if [ -f "$root/$dst" ]; then
      echo "stale: $dst differs from $src" >&2
    else
      echo "stale: $dst is missing (copy of $src)" >&2
    fi
    stale=1
    continue
  fi
  mkdir -p "$(dirname "$root/$dst")"
  cp "$root/$src" "$root/$dst"
  echo "copied $src -> $dst"
done

# A copy whose source was removed would still be installed by the chart.
for dst in "$files"/crds/*.yaml "$files"/rbac/*.yaml; do
  rel=${dst#"$root"/}
  case $wanted in *" $rel "*) continue ;; esac
  if [ $check -eq 1 ]; then
    echo "stale: $rel has no source in config/ any more" >&2
    stale=1
  else
    rm "$dst"
    echo "removed $rel"
  fi
done

if [ $stale -ne 0 ]; then
  echo "the chart's copies of the generated manifests are stale: run hack/sync-chart-crds.sh and commit" >&2
  exit 1
fi
