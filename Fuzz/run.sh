#!/usr/bin/env bash
# Builds the libFuzzer driver (sanitized release build, its own scratch path) and fuzzes each target in turn for
# FUZZ_SECONDS (default 60), one process at a time, niced. `make fuzz` runs this; not part of `make test`.
#
#   Fuzz/run.sh                      every target
#   Fuzz/run.sh jwt pem              some
#   FUZZ_SECONDS=600 Fuzz/run.sh     longer
#   FUZZ_NO_BUILD=1 Fuzz/run.sh      reuse the last build
#   FUZZ_RUNS=10000000 Fuzz/run.sh   stop a target after this many executions (or FUZZ_SECONDS, whichever first)
#
# Per target, Fuzz/work/<target>/ (not committed) holds the growing corpus (seeded from Fuzz/corpus/<target>), the
# log, and artifacts: crash-*, timeout-* (over 1 s), oom-* (over 2 GiB RSS), leak-*; unreproduced/ keeps timeouts
# whose input ran fast when run again alone (the fuzzer was starved of CPU), which do not stop it. A finding stops that target;
# the script goes on with the next and exits 1 at the end. Stopping the script (Ctrl-C, SIGTERM) ends the running
# fuzzer with SIGINT and records its executions as "stopped by hand" (a crash, leak, OOM or timeout written meanwhile
# is still a finding); later targets are not started. Fix the bug, then move the reproducer to
# Fuzz/regressions/<target>/ so that `make test` replays it. Results go to Fuzz/work/summary.tsv.
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
SCRATCH=${FUZZ_SCRATCH:-.build-fuzz}
SWIFT=${SWIFT:-swift}
ALL=(infer-request onnx-model bundle-signature bundle-manifest bundle-archive jwt jwks policy server-config egress-config
  egress-http egress-inspector audit-segment audit-record audit-checkpoint pem tpm-evidence)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  # A clean scratch path starts from the package checkouts the normal build already has (no network needed).
  if [ ! -d "$SCRATCH/checkouts" ] && [ -d .build/checkouts ]; then
    mkdir -p "$SCRATCH" && cp -a .build/checkouts .build/repositories .build/workspace-state.json "$SCRATCH/" 2>/dev/null
  fi
  PALISADE_FUZZ=1 nice -n 10 "$SWIFT" build -c release --scratch-path "$SCRATCH" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product palisade-fuzz || exit 2
fi
BIN="$SCRATCH/release/palisade-fuzz"
[ -x "$BIN" ] || { echo "no $BIN" >&2; exit 2; }

mkdir -p Fuzz/work
SUMMARY=Fuzz/work/summary.tsv
[ -f "$SUMMARY" ] || printf 'date\ttarget\tseconds\texecs\texecs_per_s\tpeak_rss_mb\tcorpus_files\tcorpus_bytes\tfinding\n' >"$SUMMARY"
failed=0
# A stop by hand: libFuzzer, sent SIGINT, prints its final stats and exits; its executions are kept.
stopping=0 fuzz_pid=""
stop() {
  stopping=1
  [ -n "$fuzz_pid" ] && kill -INT "$fuzz_pid" 2>/dev/null
}
trap stop INT TERM
for t in "${TARGETS[@]}"; do
  [ "$stopping" -eq 1 ] && break
  [ -d "Fuzz/corpus/$t" ] || { echo "unknown target $t (no Fuzz/corpus/$t)" >&2; failed=1; continue; }
  w="Fuzz/work/$t"
  mkdir -p "$w/corpus" "$w/artifacts"
  extra=()
  [ -f "Fuzz/dict/$t.dict" ] && extra=(-dict="Fuzz/dict/$t.dict")
  # The async targets run each input in a task, whose memory the concurrency runtime frees after the input returns:
  # every input looks like a leak to libFuzzer's per-input malloc/free count, which then scans the whole heap after
  # each one (~90% of bundle-archive's time). Leaks are still found: LeakSanitizer's check at exit runs (a report
  # there fails the run), it only no longer names the input.
  case "$t" in bundle-signature | bundle-archive) extra+=(-detect_leaks=0) ;; esac
  echo "== $t: ${FUZZ_SECONDS}s${FUZZ_RUNS:+ or $FUZZ_RUNS executions}"
  start=$(date +%s)
  scratch="${TMPDIR:-/tmp}/palisade-fuzz-$t-$$"
  [ -d /dev/shm ] && scratch="/dev/shm/palisade-fuzz-$t-$$"
  # Always run in a subshell, which `exec` turns into the fuzzer: its PID is then the fuzzer's own (the stop signal
  # reaches it directly), and no forked copy of this script is left for `pkill -f Fuzz/run.sh` to kill, which would
  # orphan the fuzzer instead of stopping it.
  fuzz() {
    PALISADE_FUZZ_TARGET="$t" PALISADE_FUZZ_SCRATCH="$scratch" LSAN_OPTIONS="suppressions=$PWD/Fuzz/lsan.supp" \
      ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" \
      exec nice -n 10 "$BIN" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=1 "$@"
  }
  # Artifacts that are findings (libFuzzer's slow-unit-* file reports the slowest input, it is not one).
  findings() { ls "$w/artifacts" | grep -cv '^slow-unit'; }
  # libFuzzer's timeout is wall-clock: a process starved of CPU (a build beside it, a stopped process) can report
  # a fast input as a timeout. A timeout is a finding only if the input, run again on its own, is still slow;
  # otherwise it is set aside in unreproduced/ and fuzzing resumes for the executions and time left.
  : >"$w/log"
  total=0 rss=0 unreproduced=0 finding=none rc=0
  while :; do
    [ "$stopping" -eq 1 ] && break
    run_args=()
    if [ -n "${FUZZ_RUNS:-}" ]; then
      [ "$total" -ge "$FUZZ_RUNS" ] && break
      run_args=(-runs=$((FUZZ_RUNS - total)))
    fi
    left=$((FUZZ_SECONDS - ($(date +%s) - start)))
    [ "$left" -le 0 ] && break
    found_before=$(findings)
    # In the background, so that a stop signal reaches the trap at once (bash runs traps only between commands).
    fuzz -max_total_time="$left" -print_final_stats=1 -artifact_prefix="$w/artifacts/" "${extra[@]}" "${run_args[@]}" \
      "$w/corpus" "Fuzz/corpus/$t" >"$w/log.part" 2>&1 &
    fuzz_pid=$!
    rc=0
    while :; do
      wait "$fuzz_pid"
      rc=$?
      # A wait cut short by the trap returns >128 while the fuzzer is still writing its final stats.
      kill -0 "$fuzz_pid" 2>/dev/null || break
    done
    fuzz_pid=""
    cat "$w/log.part" >>"$w/log"
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$w/log.part" | grep -o '[0-9]*$' | tail -1)
    r=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$w/log.part" | grep -o '[0-9]*$' | tail -1)
    total=$((total + ${n:-0}))
    [ "${r:-0}" -gt "$rss" ] && rss=$r
    [ $rc -eq 0 ] && break
    if [ "$stopping" -eq 1 ] && [ "$(findings)" -eq "$found_before" ]; then
      break  # libFuzzer's exit on SIGINT, nothing found
    fi
    newest=$(ls -t "$w/artifacts" 2>/dev/null | head -1)
    if [[ "$newest" == timeout-* ]] && (fuzz -runs=3 "$w/artifacts/$newest") >"$w/replay.log" 2>&1; then
      mkdir -p "$w/unreproduced"
      mv "$w/artifacts/$newest" "$w/unreproduced/"
      unreproduced=$((unreproduced + 1))
      echo "   $newest: not slow when run again on its own (starved, not a finding); resuming"
      rc=0
      continue
    fi
    if [ "$(findings)" -eq "$found_before" ]; then
      # No new artifact: a report libFuzzer did not save an input for (a leak found by the check at exit).
      newest=""
      grep -q 'LeakSanitizer: detected memory leaks' "$w/log.part" && newest="leak-at-exit"
    fi
    finding=${newest:-exit-$rc}
    failed=1
    echo "   FINDING: $finding (artifacts: $w/artifacts, log: $w/log)"
    break
  done
  rm -rf "$scratch" "$w/log.part"
  elapsed=$(( $(date +%s) - start ))
  execs=$total
  speed=$(( total / (elapsed > 0 ? elapsed : 1) ))
  files=$(find "$w/corpus" -type f | wc -l)
  bytes=$(find "$w/corpus" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  [ "$finding" = none ] && [ "$unreproduced" -gt 0 ] && finding="none ($unreproduced timeouts not reproduced)"
  [ "$stopping" -eq 1 ] && [ "$finding" = none ] && finding="none (stopped by hand)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$elapsed" "${execs:-?}" "${speed:-?}" \
    "$rss" "$files" "$bytes" "$finding" | tee -a "$SUMMARY"
done
exit $failed
