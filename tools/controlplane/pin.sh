#!/usr/bin/env bash
# Regenerate the wrapper Go modules from versions.env.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod points every k8s.io/* staging
# module at ./staging/... with a `replace`, and requires them at v0.0.0. A throw-away
# wrapper module that replaces each staging module with its published v0.<minor>.<patch>
# makes the module graph resolvable from the module proxy. etcd's server module has the
# same problem (relative replaces), solved the same way. kwok needs no trick, but gets a
# wrapper too so that its whole dependency graph is pinned by a committed go.sum. cert-manager
# (pinned in cert-manager/versions.env, built by build-cert-manager.sh) gets a wrapper that
# copies the one `replace` of its go.mod, which a dependency's go.mod does not carry over.
#
#   tools/controlplane/pin.sh                  every wrapper module
#   tools/controlplane/pin.sh cert-manager     only the named ones (kubernetes, etcd, kwok, cert-manager)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=cert-manager/versions.env
source "$here/cert-manager/versions.env"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

wanted=("$@")
wants() { ((${#wanted[@]} == 0)) || [[ " ${wanted[*]} " == *" $1 "* ]]; }

k8s_minor_patch="${KUBERNETES_VERSION#1.}"   # 1.34.4 -> 34.4

write_module() {  # dir module-path
    rm -f "$1/go.mod" "$1/go.sum"
    # The lowest go line; `go get` raises it to what the dependencies need, no more, so that
    # the pin does not demand the exact toolchain that happened to write it.
    (cd "$1" && go mod init "$2" >/dev/null 2>&1 && go mod edit -go=1.22)
}

if wants kubernetes; then
echo "pin: kubernetes v$KUBERNETES_VERSION (staging v0.$k8s_minor_patch)"
dir="$here/kubernetes"
write_module "$dir" wharf.local/controlplane/kubernetes
k8s_gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
staging="$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$k8s_gomod")"
[ -n "$staging" ] || { echo "pin: no staging replaces found in $k8s_gomod" >&2; exit 1; }
(
    cd "$dir"
    for module in $staging; do
        go mod edit "-replace=$module=$module@v0.$k8s_minor_patch"
    done
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBERNETES_VERSION" \
                 "k8s.io/kubernetes/cmd/kube-controller-manager@v$KUBERNETES_VERSION" \
                 "k8s.io/kubernetes/cmd/kube-scheduler@v$KUBERNETES_VERSION"
    go mod tidy
)
fi

if wants etcd; then
echo "pin: etcd v$ETCD_VERSION"
dir="$here/etcd"
write_module "$dir" wharf.local/controlplane/etcd
(cd "$dir" && go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" && go mod tidy)
fi

if wants kwok; then
echo "pin: kwok v$KWOK_VERSION"
dir="$here/kwok"
write_module "$dir" wharf.local/controlplane/kwok
(cd "$dir" && go get -tool "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" && go mod tidy)
fi

if wants cert-manager; then
echo "pin: cert-manager v$CERT_MANAGER_VERSION"
dir="$here/cert-manager"
write_module "$dir" wharf.local/controlplane/cert-manager
cm_gomod="$(cd "$dir" && go mod download -json "github.com/cert-manager/cert-manager@v$CERT_MANAGER_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
(
    cd "$dir"
    # Its replaces (module version => module version) hold only in its own build; copy them.
    sed -n 's#^replace \([^ ]*\) \([^ ]*\) => \([^ ]*\) \([^ ]*\)$#\1@\2=\3@\4#p' "$cm_gomod" \
        | while read -r replacement; do go mod edit "-replace=$replacement"; done
    go get -tool "github.com/cert-manager/cert-manager/cmd/controller@v$CERT_MANAGER_VERSION"
    go mod tidy
)
fi
echo "pin: done"
