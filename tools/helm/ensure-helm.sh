#!/usr/bin/env bash
# Print the path of the project's pinned helm, building it first when the cache lacks it.
#
# helm is built from source with `go install` (the Go module proxy is reachable where release
# downloads are not), once per version, into ~/.cache/wharf/helm/<version>/helm.
# Override the cache root with WHARF_CACHE_DIR. Progress goes to stderr, the path to stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(tr -d '[:space:]' < "$here/VERSION")"
cache_root="${WHARF_CACHE_DIR:-$HOME/.cache/wharf}"
bin_dir="$cache_root/helm/$version"
helm="$bin_dir/helm"

if [[ -x "$helm" ]] && "$helm" version --short 2>/dev/null | grep -Eq "^${version}(\+|$)"; then
    echo "$helm"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "ensure-helm: helm $version is not cached at $helm and no Go toolchain is on PATH to build it" >&2
    exit 1
fi

mkdir -p "$bin_dir"
echo "ensure-helm: building helm $version into $bin_dir (one-off, a few minutes)" >&2
# Like helm's own release build: the version ldflag makes `helm version` report the release, and the
# Kubernetes version of its client-go becomes the default for `helm template`/`helm lint` (else v1.20).
gomod="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
k8s_minor="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -n1)"
[[ -n "$k8s_minor" ]] || { echo "ensure-helm: cannot read helm's client-go version from $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN="$bin_dir" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version" >&2
"$helm" version --short >&2
echo "$helm"
