#!/usr/bin/env bash
# The mobile bindings (mobile-bindings/, crate cairn-mobile) proved from this Linux machine:
# the generated Kotlin/Swift/Python are the committed ones, a Kotlin program on the JVM and
# a Python program live the issue's stories against a real relay on loopback, the Swift is
# parsed and its C header linked symbol by symbol, the iOS static library builds and the
# Android target checks. scripts/test.sh calls it after the Rust tests.
#
#   scripts/bindings.sh               install what is missing, build, check, run
#   scripts/bindings.sh --regenerate  copy freshly generated bindings into
#                                     mobile-bindings/generated/ (after an API change)
#
# Installs on a fresh machine (as root): Debian's JNA, kotlinx-coroutines and atomicfu, the
# npm package kotlin-compiler (mobile-bindings/package-lock.json), a Python venv under
# target/ with tree-sitter, tree-sitter-swift and websockets, and the rustup targets
# aarch64-apple-ios and aarch64-linux-android. Fails loudly when a target cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

REGENERATE=0
case "${1:-}" in
  --regenerate) REGENERATE=1 ;;
  "") ;;
  *) echo "usage: scripts/bindings.sh [--regenerate]" >&2; exit 2 ;;
esac

MB=mobile-bindings
OUT=target/bindings            # generated bindings, test builds, relay data of a run
VENV=target/bindings-venv
PY_PINS="tree-sitter==0.26.1 tree-sitter-swift==0.7.4 websockets==15.0.1"
APT_PACKAGES="libjna-java libjna-jni libkotlinx-coroutines-java libkotlinx-atomicfu-java"
TARGETS="aarch64-apple-ios aarch64-linux-android"
JAVA_LIBS=/usr/share/java
KOTLIN_HOME=$MB/node_modules/kotlin-compiler

step() { printf '\n==> bindings: %s\n' "$*"; }
die() { printf '\nbindings: FAILED: %s\n' "$*" >&2; exit 1; }

# Wall time per step, printed at the end (and on failure, up to the failing step).
TIMINGS=()
timed() {
  local name=$1; shift
  local start=$SECONDS
  step "$name"
  "$@"
  TIMINGS+=("$(printf '%5ss  %s' $((SECONDS - start)) "$name")")
}
print_timings() {
  printf '\n==> bindings: wall time per step\n'
  local t
  for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t"; done
}

RELAY_PIDS=()
cleanup() {
  local pid
  for pid in "${RELAY_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  print_timings
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------

install_apt() {
  local missing=() p
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  fi
  for p in jna.jar kotlinx-coroutines-core.jar atomicfu.jar; do
    [[ -f $JAVA_LIBS/$p ]] || die "$JAVA_LIBS/$p missing after installing $APT_PACKAGES"
  done
}

install_kotlin() {
  # npm ci wipes node_modules; only when the lock file changed since the last install.
  if [[ ! -x $KOTLIN_HOME/bin/kotlinc-jvm || $MB/package-lock.json -nt $MB/node_modules/.package-lock.json ]]; then
    (cd $MB && npm ci --no-audit --no-fund --loglevel=error)
  fi
  command -v java >/dev/null || die "no java on PATH (the Kotlin program runs on the JVM)"
}

install_venv() {
  if [[ ! -x $VENV/bin/python || "$(cat $VENV/pins 2>/dev/null)" != "$PY_PINS" ]]; then
    rm -rf $VENV
    python3 -m venv $VENV
    # shellcheck disable=SC2086
    $VENV/bin/pip install -q --disable-pip-version-check $PY_PINS
    echo "$PY_PINS" >$VENV/pins
  fi
}

install_targets() {
  local t installed
  installed=$(rustup target list --installed)
  for t in $TARGETS; do
    if ! grep -qx "$t" <<<"$installed"; then
      if ! rustup target add "$t"; then
        printf '\n%s\n' \
          "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" \
          "!!! bindings: the Rust target $t CANNOT BE INSTALLED (rustup target add failed)." \
          "!!! The mobile build check for it cannot run: this is a failure, not a skip." \
          "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
        exit 1
      fi
    fi
  done
}

tools() {
  install_apt
  install_kotlin
  install_venv
  install_targets
}

# --- build and generate ------------------------------------------------------------------

build() {
  cargo build -p cairn-mobile -p uniffi-bindgen -p cairn-relay --locked
}

generate() {
  rm -rf $OUT/generated
  local lang
  for lang in kotlin swift python; do
    target/debug/uniffi-bindgen generate --no-format --language $lang \
      --out-dir $OUT/generated/$lang target/debug/libcairn_mobile.so >/dev/null
  done
}

compare() {
  if ((REGENERATE)); then
    rm -rf $MB/generated
    cp -r $OUT/generated $MB/generated
    echo "copied into $MB/generated/: review the diff and commit it"
    return
  fi
  if ! diff -rq $MB/generated $OUT/generated >/dev/null; then
    diff -ru $MB/generated $OUT/generated | head -n 400 || true
    die "the generated bindings differ from $MB/generated/ (the public API changed?): run scripts/bindings.sh --regenerate and commit the result"
  fi
  echo "the generated Kotlin, Swift and Python match $MB/generated/"
}

# --- Swift without a Swift compiler -------------------------------------------------------

swift_parse() {
  $VENV/bin/python $MB/tests/swift/parse_check.py $OUT/generated/swift/cairn.swift $OUT/swift
}

c_header() {
  local header=$OUT/generated/swift/cairnFFI.h dir=$OUT/c-header
  rm -rf $dir && mkdir -p $dir
  $VENV/bin/python $MB/tests/swift/header_symbols.py "$header" target/debug/libcairn_mobile.so $dir/all_symbols.c
  gcc -std=c11 -Wall -Werror -D_Nullable= -D_Nonnull= -I "$(dirname $header)" \
    $dir/all_symbols.c -o $dir/all_symbols -Ltarget/debug -lcairn_mobile -Wl,--no-as-needed
  LD_BIND_NOW=1 LD_LIBRARY_PATH=target/debug $dir/all_symbols
}

# --- the mobile targets ------------------------------------------------------------------

# The profile mobile-check (root Cargo.toml) builds dependencies unoptimised and without
# debug info: these builds prove the code compiles for the target, nothing runs them here.
ios_staticlib() {
  # `cargo rustc --crate-type staticlib`: the crate's cdylib would need Apple's linker.
  cargo rustc -p cairn-mobile --profile mobile-check --target aarch64-apple-ios --lib \
    --crate-type staticlib --locked
  local lib=target/aarch64-apple-ios/mobile-check/libcairn_mobile.a
  [[ -s $lib ]] || die "$lib was not built"
  $VENV/bin/python $MB/tests/swift/staticlib_symbols.py $lib $OUT/generated/swift/cairnFFI.h
}

android_check() {
  cargo check -p cairn-mobile --profile mobile-check --target aarch64-linux-android --locked
}

# --- the stories against a real relay ----------------------------------------------------

# Starts a relay with a fresh bootstrapped store in $OUT/run/$1; sets RELAY_URL,
# RELAY_INVITE (the organiser's invite link) and RELAY_DATA.
start_relay() {
  local name=$1 dir=$OUT/run/$1 port printed
  rm -rf "$dir" && mkdir -p "$dir"
  RELAY_DATA=$dir/relay-data
  printed=$(target/debug/cairn-relay bootstrap --data "$RELAY_DATA" 2>>"$dir/relay.log")
  RELAY_INVITE=$(sed -n 's/^ *link: *//p' <<<"$printed")
  [[ $RELAY_INVITE == cairn://invite/* ]] || die "cairn-relay bootstrap printed no invite link"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CAIRN_LOG=warn target/debug/cairn-relay serve --data "$RELAY_DATA" --listen 127.0.0.1:$port --admin-listen off \
    >>"$dir/relay.log" 2>&1 &
  RELAY_PIDS+=($!)
  RELAY_URL=ws://127.0.0.1:$port/
  local i
  for i in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
      echo "relay '$name' ready on 127.0.0.1:$port"
      return
    fi
    kill -0 "${RELAY_PIDS[-1]}" 2>/dev/null || die "the relay exited; see $dir/relay.log"
    sleep 0.1
  done
  die "the relay was not ready within 10 s; see $dir/relay.log"
}

KOTLIN_CP=$JAVA_LIBS/jna.jar:$JAVA_LIBS/kotlinx-coroutines-core.jar:$JAVA_LIBS/atomicfu.jar

kotlin_compile() {
  local dir=$OUT/kotlin sources hash
  mkdir -p $dir
  sources=$(find $OUT/generated/kotlin $MB/tests/kotlin -name '*.kt' | sort)
  # kotlinc takes most of a minute: only when a source changed.
  # shellcheck disable=SC2086
  hash=$(cat $sources | sha256sum | cut -d' ' -f1)
  if [[ -f $dir/stories.jar && "$(cat $dir/sources.sha256 2>/dev/null)" == "$hash" ]]; then
    echo "unchanged sources: reusing $dir/stories.jar"
    return
  fi
  rm -f $dir/stories.jar
  # shellcheck disable=SC2086
  $KOTLIN_HOME/bin/kotlinc-jvm -nowarn -cp "$KOTLIN_CP" -d $dir/stories.jar $sources
  echo "$hash" >$dir/sources.sha256
}

kotlin_run() {
  start_relay kotlin
  java -Djna.library.path=target/debug \
    -cp "$OUT/kotlin/stories.jar:$KOTLIN_HOME/lib/kotlin-stdlib.jar:$KOTLIN_CP" \
    cairn.stories.StoriesKt "$RELAY_URL" "$RELAY_INVITE" "$RELAY_DATA" "$OUT/run/kotlin"
}

python_run() {
  start_relay python
  local dir=$OUT/python
  rm -rf $dir && mkdir -p $dir
  # The generated module loads the library from its own folder.
  cp $OUT/generated/python/cairn.py target/debug/libcairn_mobile.so $dir/
  PYTHONPATH=$dir $VENV/bin/python $MB/tests/python/stories.py \
    "$RELAY_URL" "$RELAY_INVITE" "$RELAY_DATA" "$OUT/run/python"
}

timed "tools (apt, npm, venv, rustup targets)" tools
timed "build cairn-mobile, uniffi-bindgen, cairn-relay" build
timed "generate Kotlin, Swift, Python" generate
timed "compare with $MB/generated" compare
timed "Swift parse (tree-sitter-swift) with a negative control" swift_parse
timed "C header: compile and link every declared function" c_header
timed "Python stories" python_run
timed "Kotlin compile" kotlin_compile
timed "Kotlin stories" kotlin_run
timed "iOS static library (aarch64-apple-ios)" ios_staticlib
timed "Android check (aarch64-linux-android)" android_check
step "all bindings checks passed"
