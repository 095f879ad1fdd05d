#!/usr/bin/env bash
# Build the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd, kwok)
# from the pinned wrapper modules into a cache keyed by the pin, and print the bin dir.
#
#   tools/controlplane/build.sh            build if needed, print the bin directory
#   tools/controlplane/build.sh --check    print the bin directory if it is built, else exit 1
#
# The cache lives in ${WHARF_CACHE_DIR:-~/.cache/wharf}/controlplane/<pin-hash>/bin; the
# pin hash covers versions.env, the wrapper go.mod/go.sum files, this script and the Go
# version, so a change to any of them builds afresh and an unchanged pin is never rebuilt.
# Progress goes to stderr; stdout is only the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

command -v go >/dev/null 2>&1 || { echo "controlplane: no Go toolchain on PATH" >&2; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

pin_hash="$(
    {
        cat "$here/versions.env" "$here/build.sh"
        for module in kubernetes etcd kwok; do cat "$here/$module/go.mod" "$here/$module/go.sum"; done
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
cache_root="${WHARF_CACHE_DIR:-$HOME/.cache/wharf}/controlplane"
target="$cache_root/$pin_hash"
binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

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

# The proxy's .info file gives the release's commit time; it stands in for the build date
# so that /version is the same for every build of one pin. The proxy does not carry the
# commit hash, so gitCommit stays empty.
k8s_info_file="$(cd "$here/kubernetes" && go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Info"])')"
k8s_date="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Time"])' "$k8s_info_file")"
k8s_minor="$(cut -d. -f2 <<<"$KUBERNETES_VERSION")"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$k8s_date"
done

echo "controlplane: building kube-apiserver, kube-controller-manager and kube-scheduler v$KUBERNETES_VERSION" >&2
(cd "$here/kubernetes" && go build -trimpath -ldflags "$k8s_ldflags" -o "$work/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
echo "controlplane: building etcd v$ETCD_VERSION" >&2
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$work/bin/etcd" go.etcd.io/etcd/server/v3)
echo "controlplane: building kwok v$KWOK_VERSION" >&2
(cd "$here/kwok" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    -o "$work/bin/kwok" sigs.k8s.io/kwok/cmd/kwok)

for binary in "${binaries[@]}"; do
    [ -x "$work/bin/$binary" ] || { echo "controlplane: $binary was not built" >&2; exit 1; }
done
cp "$here/versions.env" "$work/versions.env"
rm -rf "$target"
mv "$work" "$target"
trap - EXIT
echo "built in $(( $(date +%s) - started ))s with $(go env GOVERSION)" >"$target/complete"
echo "controlplane: built in $(( $(date +%s) - started ))s -> $target/bin" >&2
echo "$target/bin"
