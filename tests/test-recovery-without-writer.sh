#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# After kill -9 under load, a restart that no client writes to stores
# the bitmaps the journal rebuilt at its clean stop, however nbdkit
# runs: as a daemon stopped by SIGTERM, captive with --run true, in the
# foreground stopped by SIGINT.  Each time the bitmap comes back
# recording and consistent (not in use), qemu-img check is clean, and
# it covers every request that reached the plugin before the kill.
# A read-only restart (-r) leaves the crashed sidecar byte for byte as
# it was, and a restart with nothing to recover and no writer leaves a
# clean sidecar byte for byte as it was.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires timeout sha256sum
loadgen="$abs_top_builddir/tests/helpers/loadgen"
checker="$abs_top_srcdir/tests/helpers/covered-check.py"
[ -x "$loadgen" ] || fail "$loadgen is not built (make -C tests helpers/loadgen)"

size=$(( 1024 * 1024 * 1024 ))
gran=65536
sidecar="$tmpdir/sidecar.qcow2"
params=( dirtybitmap-file="$sidecar" dirtybitmap=b0 )

# nbdkit (the log filter below ours says what reached the plugin) under
# random load, killed with SIGKILL; leaves $dir/plugin.log and
# $dir/loadgen.log for the check.
crash_under_load ()
{
  dir="$tmpdir/$1"
  mkdir "$dir"
  start_nbdkit_background "$dir/sock" --filter=log null $size \
    "${params[@]}" logfile="$dir/plugin.log"
  timeout 60 "$loadgen" -u "nbd+unix:///?socket=$dir/sock" -c 2 -q 4 -t 30 \
    -s $RANDOM --max-size 200000 -l "$dir/loadgen.log" \
    2> "$dir/loadgen.err" &
  local loadgen_pid=$! i
  for (( i = 0; i < 500; i++ )); do
    [ -s "$dir/loadgen.log" ] && break
    sleep 0.01
  done
  sleep 0.1
  kill -KILL "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 137 ] || fail "nbdkit was not killed (status $status)"
  wait $loadgen_pid || { cat "$dir/loadgen.err" >&2; fail "loadgen failed"; }
  [ "$(bitmap_flags -U "$sidecar" b0)" = "in-use,auto $gran" ] ||
    fail "after kill -9 b0 is '$(bitmap_flags -U "$sidecar" b0)'"
}

# The restart stopped cleanly, with nothing on stderr: b0 is stored
# consistent and covers what reached the plugin in $dir's crashed run.
check_recovered ()
{
  local how="$1" err="$2"
  [ ! -s "$err" ] || { cat "$err" >&2; fail "$how: nbdkit printed errors"; }
  qemu_check "$sidecar"
  [ "$(bitmap_flags "$sidecar" b0)" = "auto $gran" ] ||
    fail "$how with no writer left b0 '$(bitmap_flags "$sidecar" b0)'"
  /usr/bin/python3 "$checker" --sidecar "$sidecar" --bitmap b0 \
    --granularity $gran --size $size --explained-by $(( 1024 * 1024 )) \
    --plugin-log "$dir/plugin.log" "$dir/loadgen.log" > "$dir/check.out" ||
    { cat "$dir/check.out" >&2; fail "$how: b0 misses requests"; }
  echo "$0: $how: $(cat "$dir/check.out")"
  qemu-img bitmap --clear "$sidecar" b0
}

# 1. As a daemon with a pid file, stopped by SIGTERM before any client.
crash_under_load daemon
sock="$dir/sock2"
nbdkit -P "$sock.pid" -U "$sock" --filter="$FILTER" null $size \
  "${params[@]}" 2> "$sock.err" || fail "the daemon did not start"
cleanup_fn "kill -9 $(cat "$sock.pid") 2>/dev/null"
stop_daemon "$sock.pid"
check_recovered "daemon + SIGTERM" "$sock.err"

# 2. -r after a crash: the sidecar stays as the crash left it.
crash_under_load readonly
before="$(sha256sum < "$sidecar")"
nbdkit -r -U - --filter="$FILTER" null $size "${params[@]}" \
  --run true 2> "$dir/ro.err" || fail "nbdkit -r --run true failed"
[ "$(sha256sum < "$sidecar")" = "$before" ] ||
  fail "nbdkit -r changed the sidecar after a crash"
[ "$(bitmap_flags -U "$sidecar" b0)" = "in-use,auto $gran" ] ||
  fail "nbdkit -r changed b0's flags"

# 3. Captive: --run true; it also recovers what -r left.
nbdkit -U - --filter="$FILTER" null $size "${params[@]}" \
  --run true 2> "$dir/run.err" || fail "nbdkit --run true failed"
check_recovered "--run true" "$dir/run.err"

# 4. In the foreground, stopped by SIGINT.
crash_under_load foreground
start_nbdkit_background "$dir/sock2" null $size "${params[@]}"
kill -INT "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || fail "nbdkit -f stopped by SIGINT exited $status"
check_recovered "-f + SIGINT" "$dir/sock2.err"

# 5. Nothing to recover, no writer: the sidecar is left as it is.
before="$(sha256sum < "$sidecar")"
nbdkit -U - --filter="$FILTER" null $size "${params[@]}" \
  --run true 2> "$tmpdir/clean.err" || fail "nbdkit --run true failed"
[ ! -s "$tmpdir/clean.err" ] || { cat "$tmpdir/clean.err" >&2; fail "errors"; }
[ "$(sha256sum < "$sidecar")" = "$before" ] ||
  fail "a restart with nothing to recover and no writer changed the sidecar"
qemu_check "$sidecar"
