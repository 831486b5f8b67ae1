#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# nbdkit killed with SIGKILL at a random moment under load loses no
# write: once nbdkit has run again on the same sidecar and stopped
# cleanly, the bitmap is consistent for QEMU and every granule touched
# by every write, zero or trim that reached the plugin before the kill,
# acknowledged or not, is dirty.
#
# Each iteration: nbdkit with nbdkit-log-filter below the dirtybitmap
# filter (its log says which requests reached the plugin), loadgen
# sending random requests on several connections, kill -9 after a
# random delay, a clean restart, then QEMU as the referee
# (covered-check.py).  The sidecars are kept across iterations, so
# that recovery runs again and again on the same files; each bitmap
# is cleared with qemu-img after each check, so that every check sees
# one run's writes only and the bitmap never fills up.
#
# CRASH_ITERATIONS (default 24) and CRASH_SEED (default: random,
# printed) reproduce a run; "make -C tests crash-test ITERATIONS=N"
# runs many.  CRASH_SIGNAL=TERM stops nbdkit cleanly instead: a check
# of the harness itself, which must pass whatever the crash handling.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires timeout tail
loadgen="$abs_top_builddir/tests/helpers/loadgen"
checker="$abs_top_srcdir/tests/helpers/covered-check.py"
[ -x "$loadgen" ] || fail "$loadgen is not built (make -C tests helpers/loadgen)"

iterations="${CRASH_ITERATIONS:-24}"
seed="${CRASH_SEED:-$(( $(date +%s%N) % 32768 ))}"
signal="${CRASH_SIGNAL:-KILL}"
RANDOM=$seed
echo "$0: CRASH_SEED=$seed CRASH_ITERATIONS=$iterations CRASH_SIGNAL=$signal"
iteration=0
cleanup_fn '[ "$iteration" = done ] || echo "$0: failed in iteration $iteration; reproduce with CRASH_SEED=$seed CRASH_ITERATIONS=$iterations" >&2'

# A large, sparse export (the null plugin keeps no data, so memory use
# does not grow with the load), with a partial last granule.  Requests
# are small against it, so that one run dirties only part of the
# bitmap, even at the coarse crash granularity.
size=$(( 64 * 1024 * 1024 * 1024 + 1000 ))
uri_of () { echo "nbd+unix:///?socket=$1"; }

for (( iteration = 1; iteration <= iterations; iteration++ )); do
  # Every combination comes round every 8 iterations: bitmap
  # granularity, journal region size, and a delay below the log filter
  # that keeps requests inside the "plugin" when the kill comes.
  # A bitmap's granularity is fixed when it is created, hence one
  # sidecar per granularity.
  gran=$(( (iteration - 1) % 2 ? 4096 : 65536 ))
  sidecar="$tmpdir/sidecar-$gran.qcow2"
  params=( dirtybitmap-file="$sidecar" dirtybitmap=b0
           dirtybitmap-granularity=$gran )
  # Recovery dirties whole journal regions (1M by default, never finer
  # than the bitmap), but only regions that some request touched: a
  # bitmap dirty all over would prove nothing.
  crash_gran=$(( 1024 * 1024 ))
  if (( (iteration - 1) / 2 % 2 )); then
    params+=( dirtybitmap-crash-granularity=16K )
    crash_gran=16384
  fi
  explained_by=$(( crash_gran > gran ? crash_gran : gran ))
  below=( --filter=log )
  delay=()
  if (( (iteration - 1) / 4 % 2 )); then
    below+=( --filter=delay )
    delay=( delay-write=1ms delay-zero=1ms delay-trim=1ms )
  fi
  dir="$tmpdir/$iteration"
  mkdir "$dir"
  sleep_ms=$(( RANDOM % 300 ))
  load_seed=$RANDOM

  # The run that is killed.
  start_nbdkit_background "$dir/sock" "${below[@]}" null $size \
    "${params[@]}" logfile="$dir/plugin.log" "${delay[@]}"
  timeout 60 "$loadgen" -u "$(uri_of "$dir/sock")" -c 4 -q 8 -t 30 \
    -s $load_seed --max-size 200000 -l "$dir/loadgen.log" \
    2> "$dir/loadgen.err" &
  loadgen_pid=$!
  # The load has started (every connection is made before the first
  # request) when its first request is logged.
  for (( i = 0; i < 500; i++ )); do
    [ -s "$dir/loadgen.log" ] && break
    kill -0 $loadgen_pid 2>/dev/null || break
    sleep 0.01
  done
  [ -s "$dir/loadgen.log" ] ||
    { cat "$dir/loadgen.err" "$dir/sock.err" >&2; fail "loadgen did not start"; }
  sleep "$(printf '0.%03d' $sleep_ms)"
  kill -$signal "$nbdkit_pid"
  wait_nbdkit_exit
  if [ "$signal" = KILL ]; then
    [ "$status" -eq 137 ] || fail "nbdkit was not killed (status $status)"
  else
    [ "$status" -eq 0 ] ||
      { cat "$dir/sock.err" >&2; fail "nbdkit failed to stop (status $status)"; }
  fi
  loadgen_status=0
  wait $loadgen_pid || loadgen_status=$?
  [ $loadgen_status -eq 0 ] ||
    { cat "$dir/loadgen.err" >&2; fail "loadgen exited with status $loadgen_status"; }
  # Only a stopping server may fail requests (ESHUTDOWN).
  if grep ' err ' "$dir/loadgen.log" | grep -qv ' ESHUTDOWN$'; then
    grep ' err ' "$dir/loadgen.log" | grep -v ' ESHUTDOWN$' | head -5 >&2
    fail "the server failed requests"
  fi

  # The restart, which recovers the bitmap, and a clean stop.  Tracking
  # starts at the first connection that may write.
  start_nbdkit_background "$dir/sock2" null $size "${params[@]}"
  flushed=yes
  /usr/bin/python3 -m nbd -u "$(uri_of "$dir/sock2")" -c 'h.flush()' \
    2> "$dir/nbdsh.err" || flushed=no
  kill -TERM "$nbdkit_pid" 2>/dev/null || :
  wait_nbdkit_exit
  if [ $flushed = no ] || [ "$status" -ne 0 ]; then
    cat "$dir/nbdsh.err" "$dir/sock2.err" >&2
    fail "nbdkit restarted on the sidecar after kill -$signal refused a writable connection or failed (exit status $status): the bitmap was not recovered"
  fi

  # QEMU's verdict.
  qemu_check "$sidecar"
  flags="$(bitmap_flags "$sidecar" b0)"
  [ "$flags" = "auto $gran" ] ||
    { cat "$dir/sock2.err" >&2
      fail "after kill -$signal and a clean restart, bitmap b0 has flags '$flags', not 'auto $gran': it was not recovered"; }
  /usr/bin/python3 "$checker" --sidecar "$sidecar" --bitmap b0 \
    --granularity $gran --size $size --explained-by $explained_by \
    --plugin-log "$dir/plugin.log" "$dir/loadgen.log" > "$dir/check.out" ||
    { cat "$dir/check.out" >&2
      fail "the bitmap does not match the requests (${params[*]:2} ${delay[*]:-}, SIG$signal after ${sleep_ms} ms)"; }
  echo "$0: $iteration: gran $gran${params[3]:+ ${params[3]}}${delay[0]:+ delay}, SIG$signal after ${sleep_ms} ms: $(cat "$dir/check.out")"

  qemu-img bitmap --clear "$sidecar" b0
  rm -rf "$dir"
done
iteration=done
