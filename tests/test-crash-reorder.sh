#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A power failure loses nothing acknowledged even when the disk
# reorders and tears the writes it had not yet flushed.
#
# test-crash-power-loss.sh assumes the kindest disk: every write not
# yet synced is lost, all of them.  A real one may keep any subset of
# them, written in any order, the last one torn at a 512-byte
# boundary.  Here powerloss.so records every write and sync of the
# sidecar (POWERLOSS_RECORD) in a run that the power failure kills
# just before a sync (the crash point: the moment with the most
# writes pending); tests/helpers/crash-states.py, the replayer, builds
# from the initial sidecar and that record the states the disk may
# hold (its header states the model), and each state is checked:
#  - qemu-img check finds no corruption in it (leaks are allowed:
#    QEMU's own stores leak when they crash);
#  - a bitmap QEMU would take as consistent in it (not in use) holds
#    every acknowledged request;
#  - nbdkit restarted on it accepts a writable connection and stops
#    cleanly; then qemu-img check is clean (leaks reclaimed), both
#    bitmaps (b0, made by the filter at 64K, and b4k, made by qemu-img
#    at 4K) are consistent and hold every acknowledged request
#    (covered-check.py against loadgen's log).
# The load: one connection, one request at a time, a fixed seed, so
# that the dry run (no failure) and the runs killed at each crash
# point issue the same calls.  With CRASHSTATE_LIVE=1 it comes in two
# halves, and between them the control socket adds a persistent
# bitmap, b1, and stores the bitmaps while tracking goes on (the live
# commit, which keeps the journal): b1, once its addition is
# acknowledged, is there after run 2, consistent, and holds every
# request of the second half.  The dry run also checks the recorder:
# its record, replayed, gives the sidecar the run left.
#
#   CRASHSTATE_SEED=N        seed of the crash points and states (printed)
#   CRASHSTATE_STATES=N      states checked in all (default 20)
#   CRASHSTATE_PER_POINT=N   states checked per crash point at most
#                            (default 6); a point with no more states
#                            than that is checked exhaustively
#   CRASHSTATE_POINT="K..."  exactly these crash points (sync calls)
#   CRASHSTATE_STATE=SPEC    with one CRASHSTATE_POINT, exactly this
#                            state (as printed for a failure)
#   CRASHSTATE_LIVE=0|1      the load without or with the live commit
#                            (default: the seed's parity)
#   CRASHSTATE_LOAD_SEED=N   loadgen's seed (default 20260601)
#   CRASHSTATE_FILTER_ARGS="A..."  more filter parameters, such as
#                            dirtybitmap-crash-granularity=16K
#   CRASHSTATE_KEEP=DIR      copy each failed state, its base and the
#                            run's files into DIR
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp nbdinfo qemu-nbd

shim="$abs_top_builddir/tests/helpers/.libs/powerloss.so"
loadgen="$abs_top_builddir/tests/helpers/loadgen"
replayer="$abs_top_srcdir/tests/helpers/crash-states.py"
checker="$abs_top_srcdir/tests/helpers/covered-check.py"
[ -f "$shim" ] || fail "$shim is not built (make -C tests helpers/powerloss.la)"
[ -x "$loadgen" ] || fail "$loadgen is not built (make -C tests helpers/loadgen)"

size=$((64 * 1024 * 1024))
seed="${CRASHSTATE_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
budget="${CRASHSTATE_STATES:-20}"
per_point="${CRASHSTATE_PER_POINT:-6}"
live="${CRASHSTATE_LIVE:-$(( seed % 2 ))}"
load_seed="${CRASHSTATE_LOAD_SEED:-20260601}"
echo "$0: CRASHSTATE_SEED=$seed CRASHSTATE_STATES=$budget" \
     "CRASHSTATE_PER_POINT=$per_point CRASHSTATE_LIVE=$live" \
     "CRASHSTATE_LOAD_SEED=$load_seed" \
     "CRASHSTATE_FILTER_ARGS=\"${CRASHSTATE_FILTER_ARGS:-}\""

sidecar="$tmpdir/sidecar.qcow2"
ctl="$tmpdir/ctl"
filter_args=(null $size dirtybitmap-file="$sidecar" dirtybitmap=b0
             dirtybitmap-control="$ctl" ${CRASHSTATE_FILTER_ARGS:-})
uri () { echo "nbd+unix:///?socket=$1"; }

qemu-img create -q -f qcow2 "$tmpdir/initial.qcow2" $size
qemu-img bitmap --add -g 4K "$tmpdir/initial.qcow2" b4k

# One part of the load, logged in LOG; 1 when loadgen failed (as it
# does when the power fails while it connects: tracking, and its first
# commit, start at the first writable connection).
load ()
{
  local sock="$1" requests="$2" seed="$3" log="$4"
  touch "$log"
  "$loadgen" -u "$(uri "$sock")" -c 1 -q 1 -n "$requests" -s "$seed" \
    --max-size 200000 -l "$log" 2>> "$log.err"
}

# Run 1, recorded, the power failing at call K (0: never), in
# directory DIR: the record in DIR/record, loadgen's logs in
# DIR/load1.log and (live) DIR/load2.log, and DIR/b1 if the addition
# of b1 was acknowledged.
run_recorded ()
{
  local k="$1" dir="$2" want=0
  mkdir -p "$dir"
  cp "$tmpdir/initial.qcow2" "$sidecar"
  nbdkit_under=(env LD_PRELOAD="$shim" POWERLOSS_AFTER="$k"
                POWERLOSS_FILE="$sidecar" POWERLOSS_LOG="$dir/shim.log"
                POWERLOSS_RECORD="$dir/record")
  start_nbdkit_background "$dir/s1" "${filter_args[@]}"
  nbdkit_under=()
  if (( live )); then
    load "$dir/s1" 30 $load_seed "$dir/load1.log" || want=1
    if (( ! want )); then
      # (qmp.py waits for the socket, which is there once tracking
      # has started.)
      if /usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" \
           block-dirty-bitmap-add '{"name":"b1","persistent":true}' \
           > "$dir/qmp.out" 2>&1 &&
         [ "$(head -n 1 "$dir/qmp.out")" = '{"return":{}}' ]; then
        touch "$dir/b1"
        /usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" \
          x-dirtybitmap-store >> "$dir/qmp.out" 2>&1 || want=1
      else
        want=1
      fi
    fi
    (( want )) || load "$dir/s1" 30 $(( load_seed + 1 )) "$dir/load2.log" ||
      want=1
  else
    load "$dir/s1" 60 $load_seed "$dir/load1.log" || want=1
  fi
  touch "$dir/load2.log"
  kill -TERM "$nbdkit_pid" 2>/dev/null || :
  wait_nbdkit_exit
  if grep -q "^power failed" "$dir/shim.log" 2>/dev/null; then
    want=137
  elif (( want )); then
    cat "$dir/"*.err "$dir/qmp.out" >&2
    fail "the load failed (K=$k)"
  fi
  [ "$status" -eq "$want" ] ||
    fail "run 1 (K=$k) exited with status $status, expected $want:" \
         "$(tail -n 3 "$dir/s1.err")"
}

# Does bitmap NAME (granularity G) of the sidecar hold every request
# acknowledged in loadgen's LOGS?  Prints why not.
covers ()
{
  local name="$1" g="$2"
  shift 2
  /usr/bin/python3 "$checker" --sidecar "$sidecar" --bitmap "$name" \
    --granularity "$g" --size $size "$@" > "$tmpdir/covered.out" 2>&1 ||
    { echo "bitmap $name: $(head -n 4 "$tmpdir/covered.out")"; return 1; }
}

# The bitmaps to check, NAME:GRANULARITY:LOGS (the logs of the
# requests each must hold), for run 1 in directory RUN.
bitmaps_of ()
{
  local run="$1"
  echo "b0:65536:$run/load1.log,$run/load2.log"
  echo "b4k:4096:$run/load1.log,$run/load2.log"
  (( ! live )) || echo "b1:65536:$run/load2.log"
}

# Check the crash state in file STATE of run 1 in directory RUN.
# Prints why and returns 1 when the guarantee does not hold.
check_state ()
{
  local state="$1" run="$2" dir="$tmpdir/check" st name g flags logs
  rm -rf "$dir"
  mkdir "$dir"
  cp "$state" "$sidecar"

  # The state as QEMU finds it.
  st=0
  qemu-img check "$sidecar" > "$dir/check0" 2>&1 || st=$?
  if [ "$st" -ne 0 ] && [ "$st" -ne 3 ]; then
    echo "qemu-img check of the crash state (exit status $st):" \
         "$(grep -v '^$' "$dir/check0" | head -n 6)"
    return 1
  fi
  (( st != 3 )) || leaked=$(( leaked + 1 ))
  for name in $(bitmaps_of "$run"); do
    IFS=: read -r name g logs <<< "$name"
    flags="$(bitmap_flags "$sidecar" $name)"
    if [ "$flags" = "auto $g" ]; then
      covers $name $g ${logs//,/ } ||
        { echo "(in the crash state, where QEMU takes it as consistent)"
          return 1; }
    fi
  done

  # Run 2: one writable connection, no write, a clean stop.
  restart_after_crash "$dir/s2" "${filter_args[@]}" || return 1
  st=0
  qemu-img check "$sidecar" > "$dir/check" 2>&1 || st=$?
  if [ "$st" -ne 0 ]; then
    echo "qemu-img check after run 2 (exit status $st):" \
         "$(grep -v '^$' "$dir/check" | head -n 6)"
    return 1
  fi
  for name in $(bitmaps_of "$run"); do
    IFS=: read -r name g logs <<< "$name"
    flags="$(bitmap_flags "$sidecar" $name)"
    # b1 may be absent if its addition was not acknowledged.
    [ "$name:$flags" != "b1:absent" ] || [ -e "$run/b1" ] || continue
    if [ "$flags" != "auto $g" ]; then
      echo "bitmap $name after run 2 is '$flags', not 'auto $g'" \
           "(run 2 said: $(tail -n 3 "$dir/s2.err"))"
      return 1
    fi
    covers $name $g ${logs//,/ } || return 1
  done
}

# The dry run: the recorder replays exactly, and the harness passes.
start=$SECONDS
run_recorded 0 "$tmpdir/k0"
/usr/bin/python3 "$replayer" replay "$tmpdir/initial.qcow2" \
  "$tmpdir/k0/record" "$tmpdir/replayed"
cmp -s "$tmpdir/replayed" "$sidecar" ||
  fail "the record of the dry run, replayed, is not the sidecar it left"
cp "$sidecar" "$tmpdir/final.qcow2"
check_state "$tmpdir/final.qcow2" "$tmpdir/k0" > "$tmpdir/why" ||
  fail "dry run: $(cat "$tmpdir/why")"
/usr/bin/python3 "$replayer" info "$tmpdir/k0/record" > "$tmpdir/points"
echo "$0: dry run: $(cat "$tmpdir/k0/"load?.log | grep -c ' ok$') requests" \
     "acknowledged, $(wc -l < "$tmpdir/points") syncs, pending writes" \
     "before them: $(awk '{ n[$2]++ } END { for (p in n) printf "%s:%d ", p, n[p] }' \
                     "$tmpdir/points")($(( SECONDS - start )) s)"

# The crash points: first those where the header is being written
# (the commit points: a torn header once lost the journal), then the
# syncs with more than one write pending (the commits) and those with
# one (the journal) alternate, two to one, each kind in a random
# order; every point at most once.
if [ -n "${CRASHSTATE_POINT:-}" ]; then
  points="$CRASHSTATE_POINT"
else
  points="$(/usr/bin/python3 -c 'import random, sys
r = random.Random(int(sys.argv[1]))
many, one = [], []
for line in open(sys.argv[2]):
    k, p, header = map(int, line.split())
    if header:
        print(k)
    elif p:
        (many if p > 1 else one).append(k)
r.shuffle(many); r.shuffle(one)
while many or one:
    for _ in range(2):
        if many: print(many.pop())
    if one: print(one.pop())' "$seed" "$tmpdir/points")"
fi

checked=0 failed=() npoints=0 exhaustive=0 sampled=0 leaked=0
for k in $points; do
  (( checked < budget )) || break
  dir="$tmpdir/k$k"
  run_recorded "$k" "$dir"
  grep -q "^crash $k\$" "$dir/record" ||
    fail "K=$k: the power did not fail at call $k"
  mkdir "$dir/states"
  /usr/bin/python3 "$replayer" states "$tmpdir/initial.qcow2" "$dir/record" \
    "$dir/states" --seed $(( seed + k )) \
    --max $(( budget - checked < per_point ? budget - checked : per_point )) \
    ${CRASHSTATE_STATE:+--only "$CRASHSTATE_STATE"} > "$dir/list"
  cmp -s "$dir/states/base" "$sidecar" ||
    fail "K=$k: the replayer's base differs from the sidecar powerloss.so" \
         "left (every unsynced write undone)"
  read -r _ total how _ pending < "$dir/list"
  n=$(( $(wc -l < "$dir/list") - 1 ))
  npoints=$(( npoints + 1 ))
  if (( n == total )) && [ "$how" = exhaustive ]; then
    exhaustive=$(( exhaustive + 1 ))
  else
    sampled=$(( sampled + 1 ))
  fi
  what="$(sed -n 's/^power failed at call [0-9]* (\([^ ]*\) .*/\1/p' \
          "$dir/shim.log")"
  ok=0
  while read -r i spec; do
    if check_state "$dir/states/state-$i" "$dir" > "$tmpdir/why"
    then
      ok=$(( ok + 1 ))
    else
      echo "K=$k state $spec: FAILED: $(cat "$tmpdir/why")"
      echo "  replay: CRASHSTATE_SEED=$seed CRASHSTATE_POINT=$k" \
           "CRASHSTATE_STATE='$spec' $0"
      failed+=("$k:$spec")
      if [ -n "${CRASHSTATE_KEEP:-}" ]; then
        mkdir -p "$CRASHSTATE_KEEP/K$k"
        cp -r "$dir/states/state-$i" "$dir/states/base" "$dir/record" \
          "$dir/"*.log "$tmpdir/check" "$CRASHSTATE_KEEP/K$k/"
      fi
    fi
    checked=$(( checked + 1 ))
  done < <(tail -n +2 "$dir/list")
  echo "K=$k ($what, $pending pending): $ok of $n states ok" \
       "($total distinct, $how)"
  rm -rf "$dir"
done
echo "$0: $checked states at $npoints crash points ($exhaustive" \
     "exhaustive, $sampled sampled) in $(( SECONDS - start )) s;" \
     "$leaked with leaked clusters (reclaimed by the next run);" \
     "${#failed[@]} failed"
(( ${#failed[@]} == 0 )) ||
  fail "the guarantee failed for ${failed[*]}"
