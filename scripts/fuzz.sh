#!/usr/bin/env bash
# Runs every cargo-fuzz target from its committed corpus for a fixed budget, the same way
# locally and in CI; scripts/test.sh calls it. Installs cargo-fuzz and the nightly toolchain
# when missing. The corpus is copied into target/fuzz-run/ first, so a run never changes the
# repository; what the fuzzer adds there is thrown away.
#
#   CAIRN_FUZZ_SECONDS=N   seconds per target (default 90: 3 CPU-minutes in all, 90 s of
#                          wall time since the two targets run side by side on two cores)
#   CAIRN_FUZZ_TARGETS=".." which targets (default: every target in fuzz/Cargo.toml)
#   CAIRN_FUZZ_SEED=N      libFuzzer's seed (default 1, so a run is repeatable as far as a
#                          time budget allows)
#
# On a crash, an out-of-memory, a timeout or a leak it prints the input (path, hex, base64)
# and how to keep it as a regression, and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

# Limits for one input. 2 GiB: far above what the targets need (a few MiB), far below this
# machine's memory, so a runaway allocation is a finding and not a swapped-out CI machine.
# Without a sanitizer libFuzzer cannot see single mallocs (-malloc_limit_mb needs one), so
# the address space is capped too: a huge allocation then fails at once and the abort is
# reported as a crash, as in the replay test (tests/tests/fuzz_regressions.rs).
RSS_LIMIT_MB=2048
MALLOC_LIMIT_MB=2048
ADDRESS_SPACE_KIB=$((3 << 20))
# Seconds for one input; a correct engine takes milliseconds.
TIMEOUT_S=10
# Longest input the fuzzer makes: 64 steps with room for a few raw frames.
MAX_LEN=4096
SEED="${CAIRN_FUZZ_SEED:-1}"
ALL_TARGETS=(decode_frame engine_frames)
# No sanitizer: the code under test is safe Rust (automerge has one `unsafe` block), and
# AddressSanitizer would halve the runs a budget buys and lengthen the cold build. Release
# with debug assertions and overflow checks (cargo-fuzz's default without -O).
BUILD_FLAGS=(-s none)
read -r -a TARGETS <<<"${CAIRN_FUZZ_TARGETS:-${ALL_TARGETS[*]}}"

SECONDS_PER_TARGET="${CAIRN_FUZZ_SECONDS:-90}"

if ! rustup toolchain list | grep -q nightly; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once per machine)"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz has no --locked: check that fuzz/Cargo.lock is current the way cargo does.
cargo +nightly metadata --manifest-path fuzz/Cargo.toml --locked --format-version 1 >/dev/null
(cd fuzz && cargo +nightly fuzz build "${BUILD_FLAGS[@]}")

runs=target/fuzz-run
rm -rf "$runs"
pids=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$runs/$t/corpus" "$runs/$t/artifacts"
  if [[ -d "fuzz/corpus/$t" ]]; then
    cp fuzz/corpus/"$t"/* "$runs/$t/corpus/"
  fi
  secs=$SECONDS_PER_TARGET
  echo "fuzzing $t for ${secs}s from $(ls "$runs/$t/corpus" | wc -l) corpus inputs (seed $SEED)"
  # Side by side: the budget is CPU time; the targets are independent.
  (
    cd fuzz
    ulimit -v "$ADDRESS_SPACE_KIB"
    cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "../$runs/$t/corpus" -- \
      -max_total_time="$secs" -seed="$SEED" -timeout="$TIMEOUT_S" -max_len="$MAX_LEN" \
      -rss_limit_mb="$RSS_LIMIT_MB" -malloc_limit_mb="$MALLOC_LIMIT_MB" \
      -artifact_prefix="../$runs/$t/artifacts/" -print_final_stats=1
  ) >"$runs/$t/log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!TARGETS[@]}"; do
  t=${TARGETS[$i]}
  if wait "${pids[$i]}"; then
    echo "== $t: no finding ($(grep -E '^stat::number_of_executed_units' "$runs/$t/log" | awk '{print $2}') runs)"
    continue
  fi
  failed=1
  echo "== $t FAILED (full log: $runs/$t/log):"
  grep -E -A3 'panicked at|ERROR: libFuzzer|memory allocation of' "$runs/$t/log" | head -n 20
  found=0
  for artifact in "$runs/$t"/artifacts/{crash,oom,timeout,leak}-*; do
    [[ -e "$artifact" ]] || continue
    found=1
    echo
    echo "input: $artifact ($(wc -c <"$artifact") bytes)"
    echo "hex:    $(od -An -v -tx1 "$artifact" | tr -d ' \n' | head -c 4096)"
    echo "base64: $(base64 -w0 "$artifact" | head -c 4096)"
    echo "keep it as a regression (pick a name that says what it hits):"
    echo "  cp $artifact fuzz/regressions/$t/<what-it-hits>"
    echo "  cargo test -p cairn-tests --test fuzz_regressions"
    echo "minimise it first if it is long:"
    echo "  (cd fuzz && cargo +nightly fuzz tmin ${BUILD_FLAGS[*]} $t ../$artifact)"
  done
  if [[ $found == 0 ]]; then
    echo "(no input saved)"
  fi
done
exit "$failed"
