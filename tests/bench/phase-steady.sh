# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh.
#
# Phase "steady": the filter with dirtybitmap-crash-safe=false
# ("unsafe") vs crash-safe=true at each granularity in
# BENCH_STEADY_GRANS ("safe-1M", ...).  Before the measured writes each
# run writes the whole 1 GiB disk once (a sequential 1M-block fio pass),
# so in safe runs every region is durable already and the measured
# writes only take the journal's fast path.  On a BENCH_STEADY_DISK
# over 1G each run first zeroes the whole disk.  Target:
# safe/unsafe >= 0.95 (STEADY_TARGET).

steady_modes="unsafe"
for g in $BENCH_STEADY_GRANS; do steady_modes+=" safe-$g"; done

# describe_steady: the phase's settings, for the header.
describe_steady ()
{
  echo "  phase steady:   modes $steady_modes (BENCH_STEADY_GRANS)"
  if [ "$(size_bytes "$BENCH_STEADY_DISK")" -le "$DISK_BYTES" ]; then
    echo "                  disk: memory $BENCH_STEADY_DISK (BENCH_STEADY_DISK)"
    echo "                  each run: sequential 1M-block pass over the whole disk, then"
  else
    echo "                  disk: memory $BENCH_STEADY_DISK (BENCH_STEADY_DISK), writes in its first $REGION"
    echo "                  each run: NBD zero of the whole disk, sequential 1M-block pass over $REGION, then"
  fi
  echo "                  time_based runtime=${BENCH_STEADY_SECONDS}s ramp_time=${BENCH_RAMP}s (BENCH_STEADY_SECONDS, BENCH_RAMP)"
  echo "                  rounds: $BENCH_STEADY_PAIRS (BENCH_STEADY_PAIRS), ABBA order"
}

# phase_steady: the runs and their summary.
phase_steady ()
{
  echo "== phase steady: crash-safe vs not, every region durable before measuring =="
  disk_size="$BENCH_STEADY_DISK"
  crash_safe_rounds steady "$BENCH_STEADY_SECONDS" "$BENCH_RAMP" 1 \
    "$BENCH_STEADY_PAIRS" "$steady_modes" "$STEADY_TARGET"
}
