#!/usr/bin/env bash
# Idempotent set-up of everything pgcrdr needs on a fresh Debian 12 machine:
# apt packages, the unprivileged OS user that runs PostgreSQL/Patroni/etcd, the node virtualenv
# (Patroni) readable by that user, and the project's own virtualenv (.venv).
# Each step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

OS_USER="${PGCRDR_OS_USER:-pgcrdr}"
NODE_VENV="${PGCRDR_NODE_VENV:-/opt/pgcrdr/node-venv}"
SYS_PY=/usr/bin/python3          # Debian's Python: readable by the unprivileged user
APT_PKGS=(postgresql-15 postgresql-client-15 etcd-server haproxy pgbouncer pgbackrest
          python3-venv python3-dev jq iproute2   # iproute2: ip netns and tc tbf for the lab of hosts
          chromium)   # the console's browser tests (Playwright drives it; never `playwright install`)
PATRONI_SPEC='patroni[etcd3]==4.1.*'

log() { printf 'bootstrap: %s\n' "$*" >&2; }
# pip warns about find-links folders that some machines configure but do not have; drop that noise.
quiet_pip() {
  local out rc
  if out=$("$@" 2>&1); then rc=0; else rc=$?; fi
  printf '%s\n' "$out" | grep -v "is ignored: it is neither a file nor a directory" | grep -v '^$' >&2 || true
  return "$rc"
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. apt packages (only the missing ones; apt-get update once, only if needed)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  as_root apt-get update -q
  # Debian starts packaged services on install; we run our own instances on our own ports.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
for svc in etcd haproxy pgbouncer postgresql; do   # system instances would only hold ports
  if command -v service >/dev/null 2>&1; then as_root service "$svc" stop >/dev/null 2>&1 || true; fi
done

# 2. the unprivileged user for node processes
if ! id "$OS_USER" >/dev/null 2>&1; then
  log "creating OS user $OS_USER"
  as_root useradd --system --create-home --home-dir "/var/lib/$OS_USER-user" --shell /usr/sbin/nologin "$OS_USER"
fi

# 3. node virtualenv (Patroni), built from Debian's Python so $OS_USER can execute it
stamp="$NODE_VENV/.pgcrdr-stamp"
want="patroni=$PATRONI_SPEC psycopg"
if [ ! -x "$NODE_VENV/bin/patroni" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "building node virtualenv at $NODE_VENV"
  as_root mkdir -p "$(dirname "$NODE_VENV")"
  as_root "$SYS_PY" -m venv "$NODE_VENV"
  quiet_pip as_root "$NODE_VENV/bin/pip" install -q --upgrade pip
  quiet_pip as_root "$NODE_VENV/bin/pip" install -q "$PATRONI_SPEC" 'psycopg[binary]>=3.1'
  echo "$want" | as_root tee "$stamp" >/dev/null
  as_root chmod -R a+rX "$NODE_VENV"
fi
if ! runuser -u "$OS_USER" -- test -x "$NODE_VENV/bin/patroni" 2>/dev/null; then
  log "ERROR: $NODE_VENV/bin/patroni is not executable by user $OS_USER"; exit 1
fi

# 4. project virtualenv
pyhash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/pgcrdr ] || [ "$(cat .venv/.pgcrdr-stamp 2>/dev/null)" != "$pyhash" ]; then
  log "building project virtualenv .venv"
  "$SYS_PY" -m venv .venv
  quiet_pip .venv/bin/pip install -q --upgrade pip
  quiet_pip .venv/bin/pip install -q -e '.[test,dev]'
  echo "$pyhash" > .venv/.pgcrdr-stamp
fi
log "ready"
