#!/usr/bin/env bash
# Build a local Python 3.11 base image with debootstrap and import it into the container engine.
#
# Where no registry can be pulled from, the Dockerfile's default base (the official slim Python 3.11 image)
# is out of reach; this makes an equivalent one from Debian bookworm (python3 is 3.11 there):
#
#   scripts/build-base-image.sh                 # prints the image name, e.g. localhost/wharf-base:py3.11-bookworm
#   docker build --build-arg BASE_IMAGE="$(scripts/build-base-image.sh)" -t wharf:dev .
#
# The root filesystem tarball is cached under ${WHARF_CACHE_DIR:-~/.cache/wharf}/base/ and the import is
# skipped when the engine already has the tag. Needs root and `debootstrap` for the first build.
# Environment: CONTAINER_CLI (docker or podman, default docker), BASE_TAG, DEBIAN_MIRROR (default: the first
# URI of the host's apt sources). Progress goes to stderr, the image name to stdout.
set -euo pipefail

suite=bookworm
tag="${BASE_TAG:-localhost/wharf-base:py3.11-$suite}"
cli="${CONTAINER_CLI:-docker}"
cache_dir="${WHARF_CACHE_DIR:-$HOME/.cache/wharf}/base"
tarball="$cache_dir/$suite-python3.11.tar"

log() { echo "build-base-image: $*" >&2; }

apt_mirror() {
    # The host's own Debian mirror, so this works wherever apt does.
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    if [[ -z "$uri" ]]; then
        uri="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    [[ -n "$uri" ]] || { log "no Debian mirror found in apt sources; set DEBIAN_MIRROR"; exit 1; }
    echo "$uri"
}

build_tarball() {
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root"; exit 1; }
    mkdir -p "$cache_dir"
    local rootfs
    rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $suite into $rootfs (about a minute)"
    # python3-venv brings ensurepip, so the image's build stage can make a virtualenv with pip;
    # ca-certificates lets pip verify the package index.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$rootfs" "$(apt_mirror)" >&2
    # The host's CA bundle replaces Debian's: a local image should reach the package index the way the
    # host does, including through a TLS-inspecting proxy whose CA only the host trusts.
    if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    # What an image does not need: package lists, caches, docs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    chroot "$rootfs" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' >&2
    tar -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
}

if [[ ! -s "$tarball" ]]; then
    build_tarball
fi

if "$cli" image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already present in $cli"
else
    log "importing $tarball as $tag"
    "$cli" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tarball" "$tag" >&2
fi
echo "$tag"
