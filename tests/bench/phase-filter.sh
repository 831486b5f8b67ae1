# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh.
#
# Phase "filter": no filter vs the filter with its defaults (so
# crash-safe, 1M regions), each run after a prefill (BENCH_PREFILL):
# the filter's steady cost.  With BENCH_NULL=1 the "filter" runs are
# made without the filter too (mode "control"): a noise check.

# describe_filter: the phase's settings, for the header.
describe_filter ()
{
  echo "  phase filter:   no-filter vs filter (defaults: crash-safe, 1M regions)"
  echo "                  time_based runtime=${BENCH_SECONDS}s ramp_time=${BENCH_RAMP}s (BENCH_SECONDS, BENCH_RAMP)"
  echo "                  prefill: $([ "$BENCH_PREFILL" = 1 ] && echo "yes, one sequential 1M-block pass over the disk before each run" || echo no) (BENCH_PREFILL)"
  echo "                  pairs: $BENCH_PAIRS (BENCH_PAIRS), ABBA order, fresh nbdkit per run"
  if [ "$BENCH_NULL" = 1 ]; then
    echo "  NOISE CHECK:    BENCH_NULL=1: no run uses the filter; 'control' is a second no-filter mode"
  fi
}

# phase_filter: the runs and their summary.
phase_filter ()
{
  local mode_b pair mode run results warm_a

  echo "== phase filter: no filter vs filter (defaults) =="
  if [ "$BENCH_NULL" = 1 ]; then
    mode_b=control
  else
    mode_b=filter
  fi

  if [ "$BENCH_WARMUP" = 1 ] && [ "$warmed" = 0 ]; then
    # Not counted: the first runs after a quiet spell were often slow.
    one_run no-filter w1 "$BENCH_SECONDS" "$BENCH_RAMP" "$BENCH_PREFILL"
    warm_a="$IOPS"
    one_run "$mode_b" w2 "$BENCH_SECONDS" "$BENCH_RAMP" "$BENCH_PREFILL"
    echo "warm-up (not counted): no-filter $warm_a IOPS, $mode_b $IOPS IOPS"
    echo
    warmed=1
  fi

  results="$tmpdir/results-filter"
  : >"$results"
  printf '%-4s %-5s %-10s %12s\n' run pair mode "write IOPS"
  run=0
  for pair in $(seq "$BENCH_PAIRS"); do
    for mode in $(round_order "$pair" no-filter "$mode_b"); do
      run=$((run + 1))
      one_run "$mode" "f$run" "$BENCH_SECONDS" "$BENCH_RAMP" "$BENCH_PREFILL"
      echo "$pair $mode $IOPS" >>"$results"
      printf '%-4s %-5s %-10s %12s\n' "$run" "$pair" "$mode" "$IOPS"
    done
  done
  echo

  "$PYTHON" "$bench_dir/summarise-filter.py" \
    "$results" "$TARGET" "$mode_b" "$summary" ||
    die "could not summarise the results"
  echo
}
