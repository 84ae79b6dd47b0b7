#!/usr/bin/env bash
# Make sure what the production-topology tests need is on this machine (idempotent, quick when it is):
#   - PostgreSQL listening on 127.0.0.1:5432, reachable as the `postgres` superuser over TCP;
#   - Redis listening on 127.0.0.1:6379;
#   - Debian's docker-compose (only `docker-compose config` is used: no Docker engine needed);
#   - the clients the compose healthchecks call: curl, pg_isready, redis-cli.
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
pg_super_ok() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }

packages=()
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
if ! port_open 5432; then
  { command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql/*/main >/dev/null 2>&1; } || packages+=(postgresql)
fi
command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)  # psql, pg_isready (healthcheck)
if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
fi
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)  # the redis healthcheck
command -v curl >/dev/null 2>&1 || packages+=(curl)  # the api-server, scheduler and mlflow healthchecks

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

if ! port_open 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting PostgreSQL ${version}/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
fi
if ! pg_super_ok; then
  # A fresh Debian cluster asks for a password over TCP. The tests create their own password-protected
  # role and databases as the superuser, so let the local `postgres` superuser in over loopback.
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -1 || true)
  if [[ $(id -u) == 0 && -n $hba ]] && ! grep -q '^# evergreen-tests' "$hba"; then
    log "allowing the postgres superuser over 127.0.0.1 without password in $hba (test machine setup)"
    { echo '# evergreen-tests: superuser over loopback for the test suite'
      echo 'host all postgres 127.0.0.1/32 trust'
      cat "$hba"; } >"$hba.new"
    chown --reference="$hba" "$hba.new" && chmod --reference="$hba" "$hba.new" && mv "$hba.new" "$hba"
    runuser -u postgres -- psql -q -c 'select pg_reload_conf()' >/dev/null
    sleep 1
  fi
  pg_super_ok || { log "ERROR: cannot connect to PostgreSQL on 127.0.0.1:5432 as postgres"; exit 1; }
fi

if ! port_open 6379; then
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis
fi
log "ok: PostgreSQL :5432, Redis :6379, $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"
