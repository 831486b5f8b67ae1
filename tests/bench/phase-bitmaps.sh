# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh.
#
# Phase "bitmaps": 64 recording bitmaps ("bm64-*") vs 1 ("bm1-*"), with
# crash safety on ("*-safe", the default 1M regions) and off
# ("*-unsafe"), all at the default granularity (64K), each nbdkit with
# dirtybitmap-control=SOCKET.  Each run writes the whole disk once (so
# every region is durable), then one QMP transaction clears every
# bitmap (BENCH_BITMAPS_ADD=params: b0..b63 given as 64 dirtybitmap=
# parameters, so persistent) or clears b0 and adds b1..b63 with
# persistent=false (BENCH_BITMAPS_ADD=qmp), then the measured writes.
# After them, query-dirty-bitmaps must show every bitmap recording with
# the same dirty count, above 0: a run that did not record in all of
# them fails the benchmark.  Target: bm64/bm1 >= 0.97 for each
# crash-safety setting (BITMAPS_TARGET).

bitmaps_modes=""
for s in $BENCH_BITMAPS_SAFE; do
  bitmaps_modes+="bm1-$s bm$BENCH_BITMAPS_COUNT-$s "
done
bitmaps_modes="${bitmaps_modes% }"

# describe_bitmaps: the phase's settings, for the header.
describe_bitmaps ()
{
  echo "  phase bitmaps:  modes $bitmaps_modes (BENCH_BITMAPS_COUNT, BENCH_BITMAPS_SAFE)"
  echo "                  each run: control socket, sequential 1M-block pass over the whole disk,"
  if [ "$BENCH_BITMAPS_ADD" = params ]; then
    echo "                  bitmaps b0.. given as dirtybitmap= parameters (persistent), one QMP"
    echo "                  transaction clearing them all, then (BENCH_BITMAPS_ADD)"
  else
    echo "                  one QMP transaction clearing b0 and adding b1.. (persistent=false),"
    echo "                  then (BENCH_BITMAPS_ADD)"
  fi
  echo "                  time_based runtime=${BENCH_BITMAPS_SECONDS}s ramp_time=${BENCH_RAMP}s (BENCH_BITMAPS_SECONDS, BENCH_RAMP),"
  echo "                  then query-dirty-bitmaps: every bitmap recording, same count > 0"
  echo "                  rounds: $BENCH_BITMAPS_ROUNDS (BENCH_BITMAPS_ROUNDS), ABBA order"
}

# bitmaps_count MODE: the number of bitmaps of a bitmaps-phase mode.
bitmaps_count ()
{
  local n="${1%%-*}"
  echo "${n#bm}"
}

# bitmaps_qmp STEP MODE: the QMP step ("prepare" or "check", see
# tests/bench/bitmaps-qmp.py) for MODE's bitmaps on the control socket.
bitmaps_qmp ()
{
  "$PYTHON" "$bench_dir/bitmaps-qmp.py" "$control" \
    "$abs_top_srcdir/tests/helpers" "$1" "$2" "$(bitmaps_count "$2")" \
    "$BENCH_BITMAPS_ADD"
}

# bitmaps_prepare MODE N: run_fio's hook, between prefill and measuring.
bitmaps_prepare ()
{
  bitmaps_qmp prepare "$1" ||
    die "could not prepare the bitmaps ($1, run $2)"
}

# phase_bitmaps: the runs and their summary.
phase_bitmaps ()
{
  local round mode run results warm dirty

  echo "== phase bitmaps: $BENCH_BITMAPS_COUNT recording bitmaps vs 1 =="
  before_measuring=bitmaps_prepare
  if [ "$BENCH_WARMUP" = 1 ] && [ "$warmed" = 0 ]; then
    warm=""
    for mode in $bitmaps_modes; do
      one_run "$mode" w-bitmaps "$BENCH_BITMAPS_SECONDS" "$BENCH_RAMP" 1
      warm+=" $mode $IOPS IOPS,"
    done
    echo "warm-up (not counted):${warm%,}"
    echo
    warmed=1
  fi

  results="$tmpdir/results-bitmaps"
  : >"$results"
  printf '%-4s %-5s %-12s %12s %14s\n' run round mode "write IOPS" "dirty bytes"
  run=0
  for round in $(seq "$BENCH_BITMAPS_ROUNDS"); do
    # shellcheck disable=SC2086
    for mode in $(round_order "$round" $bitmaps_modes); do
      run=$((run + 1))
      start_nbdkit "$mode"
      run_fio "$mode" "bitmaps$run" "$BENCH_BITMAPS_SECONDS" "$BENCH_RAMP" 1
      dirty="$(bitmaps_qmp check "$mode")" ||
        die "the bitmaps did not all record ($mode, run $run)"
      stop_nbdkit "$mode"
      echo "$round $mode $IOPS" >>"$results"
      printf '%-4s %-5s %-12s %12s %14s\n' "$run" "$round" "$mode" "$IOPS" \
        "$dirty"
    done
  done
  before_measuring=
  echo

  "$PYTHON" "$bench_dir/summarise-bitmaps.py" "$results" "$BITMAPS_TARGET" \
    "$BENCH_BITMAPS_COUNT" "$BENCH_BITMAPS_ADD" "$summary" ||
    die "could not summarise the bitmaps phase"
  echo
}
