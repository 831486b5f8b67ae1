# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh.
#
# Phase "fresh": the modes of the steady phase (at the granularities in
# BENCH_FRESH_GRANS) on a fresh sidecar, no prefill, no ramp: the
# measured writes are the first the bitmap sees, so safe runs wait for
# commits (journal page write + fdatasync) until every region they
# touch is durable.  Reports the ratio over the whole run and over its
# first second, and fdatasync calls per GiB first written: the filter's
# own counter ("journal: N commits (fdatasync) ...", logged at clean
# stop when nbdkit runs with -v) divided by the data regions first
# written, counted from bitmap b0 in the sidecar after the stop (with
# qemu-nbd and nbdinfo; without them, over the whole disk).

fresh_modes="unsafe"
for g in $BENCH_FRESH_GRANS; do fresh_modes+=" safe-$g"; done

# describe_fresh: the phase's settings, for the header.
describe_fresh ()
{
  echo "  phase fresh:    modes $fresh_modes (BENCH_FRESH_GRANS)"
  echo "                  each run: fresh sidecar and disk, no prefill, time_based runtime=${BENCH_FRESH_SECONDS}s ramp_time=0 (BENCH_FRESH_SECONDS)"
  echo "                  rounds: $BENCH_FRESH_ROUNDS (BENCH_FRESH_ROUNDS), ABBA order"
  if [ "$have_map" = 1 ]; then
    echo "                  regions first written: counted from b0 in the sidecar (qemu-nbd -B b0 + nbdinfo --map)"
  else
    echo "                  regions first written: qemu-nbd or nbdinfo missing: the whole disk is assumed"
  fi
}

# phase_fresh: the runs and their summary.
phase_fresh ()
{
  echo "== phase fresh: crash-safe vs not, fresh sidecar, nothing durable =="
  disk_size="$DISK_SIZE"
  crash_safe_rounds fresh "$BENCH_FRESH_SECONDS" 0 0 \
    "$BENCH_FRESH_ROUNDS" "$fresh_modes" -
}
