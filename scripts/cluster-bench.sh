#!/usr/bin/env bash
# Cross-relay propagation benchmark (issue 13): builds the relay and the bench (release),
# starts a throwaway PostgreSQL in a temporary directory (127.0.0.1 only, a free port,
# trust authentication for loopback), runs cairn-cluster-bench against it, and always
# stops PostgreSQL and removes the directory on exit. Arguments go to the bench, e.g.
#
#   scripts/cluster-bench.sh --listen on --changes 600
#
# Needs the PostgreSQL server binaries (`apt-get install postgresql`). As root, initdb and
# postgres (which refuse root) run as the `postgres` user. Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  bindir="$(pg_config --bindir)"
else
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
      bindir="$d"
      break
    fi
  done
fi
if [ -z "$bindir" ]; then
  echo "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql" >&2
  exit 1
fi

echo "==> cargo build --release -p cairn-relay -p cairn-bench" >&2
cargo build --release -p cairn-relay -p cairn-bench

as_pg=()
if [ "$(id -u)" = 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "running as root, PostgreSQL needs the postgres user (scripts/test.sh makes it)" >&2
    exit 1
  fi
  as_pg=(runuser -u postgres --)
fi

tmp="$(mktemp -d -t cairn-cluster-bench.XXXXXX)"
started=""
cleanup() {
  if [ -n "$started" ]; then
    "${as_pg[@]}" "$bindir/pg_ctl" stop -D "$tmp/data" -m fast -s >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/sock"
if [ "$(id -u)" = 0 ]; then
  chown -R postgres: "$tmp"
fi

# A free loopback port: nothing answers on it (postgres fails to start if it was taken
# meanwhile).
port=""
for _ in $(seq 1 50); do
  p=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    port="$p"
    break
  fi
done
if [ -z "$port" ]; then
  echo "no free loopback port found" >&2
  exit 1
fi

echo "==> PostgreSQL ($bindir) on 127.0.0.1:$port" >&2
"${as_pg[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --locale=C \
  --no-sync --no-instructions >"$tmp/initdb.log" 2>&1 || {
  cat "$tmp/initdb.log" >&2
  exit 1
}
started=1
"${as_pg[@]}" "$bindir/pg_ctl" start -D "$tmp/data" -w -t 60 -s -l "$tmp/server.log" \
  -o "-p $port -k $tmp/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" || {
  tail -n 20 "$tmp/server.log" >&2 || true
  exit 1
}

status=0
target/release/cairn-cluster-bench --pg "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable" "$@" || status=$?
exit "$status"
