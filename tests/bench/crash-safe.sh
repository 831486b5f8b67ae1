# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh: the rounds the
# steady and fresh phases share (tests/bench/phase-steady.sh and
# phase-fresh.sh), crash-safe modes against "unsafe", with the journal's
# counters of each run.

# crash_safe_rounds PHASE SECONDS RAMP PREFILL ROUNDS MODES TARGET: the
# warm-up (if it is due), ROUNDS rounds of the MODES in ABBA order on a
# memory disk of $disk_size, and the summary against TARGET ("-" for
# none).  Each run: SECONDS of writes after RAMP, after a prefill if
# PREFILL is 1.  Leaves disk_size at the default.
crash_safe_rounds ()
{
  local phase="$1" seconds="$2" ramp="$3" prefill="$4" nrounds="$5"
  local modes="$6" target="$7"
  local round mode run results counters touched g gib warm

  if [ "$BENCH_WARMUP" = 1 ] && [ "$warmed" = 0 ]; then
    warm=""
    for mode in $modes; do
      one_run "$mode" "w-$phase" "$seconds" "$ramp" "$prefill"
      warm+=" $mode $IOPS IOPS,"
    done
    echo "warm-up (not counted):${warm%,}"
    echo
    warmed=1
  fi

  results="$tmpdir/results-$phase"
  : >"$results"
  printf '%-4s %-5s %-10s %12s %12s %8s %8s %8s %10s\n' \
    run round mode "write IOPS" "1st second" commits pages waited "GiB new"
  run=0
  for round in $(seq "$nrounds"); do
    # shellcheck disable=SC2086
    for mode in $(round_order "$round" $modes); do
      run=$((run + 1))
      one_run "$mode" "$phase$run" "$seconds" "$ramp" "$prefill"
      counters="$(journal_counters)"
      touched=-
      if [ "$phase" = fresh ] && [ "${mode#safe-}" != "$mode" ]; then
        g="$(size_bytes "${mode#safe-}")"
        touched="$(touched_bytes "$g")"
      fi
      echo "$round $mode $IOPS $IOPS1 $counters $touched" >>"$results"
      gib=-
      if [ "$touched" != - ]; then
        gib="$(awk -v b="$touched" 'BEGIN { printf "%.3f", b / 1073741824 }')"
      fi
      # shellcheck disable=SC2086
      printf '%-4s %-5s %-10s %12s %12s %8s %8s %8s %10s\n' \
        "$run" "$round" "$mode" "$IOPS" "$IOPS1" $counters "$gib"
    done
  done
  echo

  "$PYTHON" "$bench_dir/summarise-crash-safe.py" "$results" "$phase" \
    "$target" \
    "$([ "$(size_bytes "$disk_size")" -gt "$DISK_BYTES" ] && echo "$disk_size" || echo -)" \
    "$summary" ||
    die "could not summarise the $phase phase"
  disk_size="$DISK_SIZE"
  echo
}
