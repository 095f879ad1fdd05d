#!/usr/bin/env bash
# Start or stop a private Docker daemon (Debian's docker.io) for local image builds and tests.
#
#   eval "$(scripts/local-dockerd.sh start)"   # prints `export DOCKER_HOST=...`; reuses a running one
#   scripts/local-dockerd.sh stop
#
# Its data root is cached under ${WHARF_CACHE_DIR:-~/.cache/wharf}/dockerd so base images and build layers
# survive between runs; its sockets live under /run/wharf-dockerd. It runs without a bridge or iptables rules
# (nothing is changed in the host's network): builds use `--network host`, containers use host or no network.
# The explicit ulimits are needed where the sandbox lacks CAP_SYS_RESOURCE. Needs root.
set -euo pipefail

state_dir=/run/wharf-dockerd
sock="$state_dir/docker.sock"
pidfile="$state_dir/dockerd.pid"
data_root="${WHARF_CACHE_DIR:-$HOME/.cache/wharf}/dockerd"
docker=/usr/bin/docker   # Debian's client; another `docker` earlier on PATH may be a different build
dockerd=/usr/sbin/dockerd

log() { echo "local-dockerd: $*" >&2; }
alive() { DOCKER_HOST="unix://$sock" "$docker" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
    [[ -x "$dockerd" && -x "$docker" ]] || { log "docker.io is not installed (apt-get install docker.io)"; exit 1; }
    if alive; then
        echo "export DOCKER_HOST=unix://$sock"
        return
    fi
    mkdir -p "$state_dir" "$data_root"
    log "starting dockerd (data root $data_root)"
    nohup "$dockerd" --data-root "$data_root" --exec-root "$state_dir/exec" --pidfile "$pidfile" \
        -H "unix://$sock" --iptables=false --ip6tables=false --bridge=none --storage-driver overlay2 \
        --default-ulimit nofile=1024:1024 --default-ulimit nproc=1024:1024 \
        >"$state_dir/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if alive; then
            echo "export DOCKER_HOST=unix://$sock"
            return
        fi
        sleep 0.5
    done
    log "dockerd did not become ready; its log:"
    tail -n 20 "$state_dir/dockerd.log" >&2
    exit 1
}

stop() {
    [[ -s "$pidfile" ]] || { log "not running"; return; }
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if mountpoint -q "$state_dir/exec/netns/default" 2>/dev/null; then
        umount "$state_dir/exec/netns/default" || true
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
