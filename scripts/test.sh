#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine of this project's kind, then runs
# every gate and every test. README.md's test command and .ci/run both call this.
#
#   CAIRN_SIM_SEEDS=N         more simulator seeds (default in the test: 40)
#   CAIRN_CRASH_ITERATIONS=N  more relay SIGKILL/restart rounds (default in the test: 20)
#   CAIRN_POWER_CUTS=N        more power cuts in the FUSE power-cut tests (default: 6)
#   CAIRN_FUZZ_SECONDS=N      fuzz each target this long (default: scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A run from a clean clone gains nothing from incremental compilation, and its cache
# is gigabytes on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! rustup toolchain list | grep -q nightly; then
  rustup toolchain install nightly --profile minimal
fi

step "node interop dependencies (tests/js)"
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

# The power-cut tests mount an in-memory FUSE filesystem (tests/src/volatile_fs). As root
# fuser mounts /dev/fuse directly; fusermount3 is its way in everywhere else.
step "FUSE for the power-cut tests (fuse3)"
if ! command -v fusermount3 >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq fuse3
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the engine builds without the client runtime and without tokio"
if cargo tree -p cairn-sync --no-default-features -e normal | grep -q '^.*tokio'; then
  echo "cairn-sync without default features depends on tokio" >&2
  exit 1
fi
cargo check -p cairn-sync --no-default-features --locked

step "the relay compiles the sync layer only (no workspace model, time zones or cipher)"
if cargo tree -p cairn-relay -e normal --prefix none | grep -E '^(cairn-core|jiff|chacha20poly1305|autosurgeon) '; then
  echo "cairn-relay depends on the workspace layer" >&2
  exit 1
fi

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The PostgreSQL store's tests (server/tests/storage_backends.rs and the cluster tests)
# start a throwaway server themselves: they need the server binaries, not a service.
step "PostgreSQL server binaries for the shared-store tests"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  && ! { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  # The package starts its own cluster where services run; the tests do not use it.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r version name _; do
      pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
    done
  fi
fi
# As root the tests run initdb and postgres as this user (both refuse root).
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
fi

step "tests"
cargo test --workspace --locked
scripts/bindings.sh  # the mobile bindings: generated files, Kotlin/Python stories, Swift, iOS, Android

# Last: the replay of every saved crasher (in the tests above) names a failure precisely;
# the fuzzers look for new ones.
step "fuzz targets run from their corpus for a fixed budget (nightly, cargo-fuzz)"
scripts/fuzz.sh
