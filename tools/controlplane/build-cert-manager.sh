#!/usr/bin/env bash
# Build cert-manager's controller from its pinned wrapper module, with its CRDs, into a cache
# keyed by that pin alone, and print the bin directory.
#
#   tools/controlplane/build-cert-manager.sh          build if needed, print the bin directory
#   tools/controlplane/build-cert-manager.sh --check  print the bin directory if it is built, else exit 1
#
# The cache is ${WHARF_CACHE_DIR:-~/.cache/wharf}/cert-manager/<pin-hash>/ with bin/controller and
# crds/*.yaml (the release's deploy/crds with the Helm template markers in their labels replaced by
# plain values, so that they apply as they are). The hash covers cert-manager/versions.env, the
# wrapper go.mod/go.sum, this script and the Go version; it is separate from build.sh's, so a
# cert-manager change never rebuilds kube-apiserver and the other way round.
# Progress goes to stderr; stdout is only the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module_dir="$here/cert-manager"
# shellcheck source=cert-manager/versions.env
source "$module_dir/versions.env"

command -v go >/dev/null 2>&1 || { echo "cert-manager: no Go toolchain on PATH" >&2; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

pin_hash="$(
    {
        cat "$module_dir/versions.env" "$here/build-cert-manager.sh" "$module_dir/go.mod" "$module_dir/go.sum"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
cache_root="${WHARF_CACHE_DIR:-$HOME/.cache/wharf}/cert-manager"
target="$cache_root/$pin_hash"

is_built() { [ -f "$target/complete" ]; }

if [ "${1:-}" = "--check" ]; then
    is_built && { echo "$target/bin"; exit 0; }
    exit 1
fi
if is_built; then
    echo "$target/bin"
    exit 0
fi

mkdir -p "$cache_root"
# One builder at a time per cache: a second caller waits, then finds the result.
exec 9>"$cache_root/.build.lock"
flock 9
if is_built; then
    echo "$target/bin"
    exit 0
fi

work="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

module="github.com/cert-manager/cert-manager"
echo "cert-manager: building the controller v$CERT_MANAGER_VERSION" >&2
(cd "$module_dir" && go build -trimpath \
    -ldflags "-s -w -X $module/pkg/util.AppVersion=v$CERT_MANAGER_VERSION" \
    -o "$work/bin/controller" "$module/cmd/controller")
[ -x "$work/bin/controller" ] || { echo "cert-manager: the controller was not built" >&2; exit 1; }

module_src="$(cd "$module_dir" && go list -m -f '{{.Dir}}' "$module")"
mkdir -p "$work/crds"
for crd in "$module_src"/deploy/crds/crd-*.yaml; do
    sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
        -e "s/'{{ .Release.Name }}'/cert-manager/" \
        -e '/{{-* *include "labels"/d' "$crd" >"$work/crds/$(basename "$crd")"
done
if grep -l '{{' "$work"/crds/*.yaml >&2; then
    echo "cert-manager: Helm template markers left in the CRDs above" >&2
    exit 1
fi

cp "$module_dir/versions.env" "$work/versions.env"
rm -rf "$target"
mv "$work" "$target"
trap - EXIT
echo "built in $(( $(date +%s) - started ))s with $(go env GOVERSION)" >"$target/complete"
echo "cert-manager: built in $(( $(date +%s) - started ))s -> $target/bin" >&2
echo "$target/bin"
