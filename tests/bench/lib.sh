# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh: what every phase
# uses to make one measured run (start nbdkit in a mode, fio, stop it
# and check it), and the cleanup of anything started.  Defines
# functions (and the run_fio hook before_measuring); they read the
# settings and paths that run.sh sets.

die ()
{
  echo "$0: FAIL: $*" >&2
  exit 1
}

# size_bytes SIZE: bytes in SIZE (a number with an optional K, M, G or T).
size_bytes ()
{
  case "$1" in
    *K) echo $(( ${1%K} * 1024 )) ;;
    *M) echo $(( ${1%M} * 1024 * 1024 )) ;;
    *G) echo $(( ${1%G} * 1024 * 1024 * 1024 )) ;;
    *T) echo $(( ${1%T} * 1024 * 1024 * 1024 * 1024 )) ;;
    *)  echo "$1" ;;
  esac
}

# has_phase PHASE: whether PHASE is in BENCH_PHASES.
has_phase ()
{
  [[ " $BENCH_PHASES " == *" $1 "* ]]
}

# cleanup: the EXIT trap: stop what is running, remove the temporary
# and sidecar directories.
cleanup ()
{
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$child_pid" ]; then
    kill -TERM "$child_pid" 2>/dev/null || :
    wait "$child_pid" 2>/dev/null || :
  fi
  if [ -n "$nbdkit_pid" ] && kill -0 "$nbdkit_pid" 2>/dev/null; then
    kill -TERM "$nbdkit_pid" 2>/dev/null || :
    # Give it a moment to store the sidecar, then insist.
    for _ in $(seq 50); do
      kill -0 "$nbdkit_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$nbdkit_pid" 2>/dev/null || :
    wait "$nbdkit_pid" 2>/dev/null || :
  fi
  if [ -n "$sidecar_dir" ] && [ "$sidecar_dir" != "$tmpdir" ]; then
    rm -rf "$sidecar_dir"
  fi
  rm -rf "$tmpdir"
  exit "$status"
}

# fs_of DIR: "TYPE (DEVICE, mounted on MOUNTPOINT)".
fs_of ()
{
  df -PT "$1" | awk 'NR == 2 { print $2 " (" $1 ", mounted on " $7 ")" }'
}
fs_type_of ()
{
  df -PT "$1" | awk 'NR == 2 { print $2 }'
}

# Modes:
#   no-filter, control   the memory plugin alone
#   filter               the filter with its defaults
#   unsafe               the filter, dirtybitmap-crash-safe=false
#   safe-SIZE            the filter, dirtybitmap-crash-safe=true and
#                        dirtybitmap-crash-granularity=SIZE
#   bmN-safe, bmN-unsafe the filter with N recording bitmaps (b0 ...),
#                        crash-safe or not, and a control socket
#   f-*, q-*             the views phase's (phase-views.sh): the
#                        filter, qemu-storage-daemon
# unsafe and safe-* run with debug messages (see run.sh).
mode_has_filter ()
{
  case "$1" in
    no-filter|control|q-*) return 1 ;;
    *) return 0 ;;
  esac
}

# start_nbdkit MODE: start nbdkit in the background on $sock and wait,
# bounded, until it accepts connections.
start_nbdkit ()
{
  local mode="$1" i n
  local -a cmd=("${nbdkit_pin[@]}" nbdkit -f -U "$sock" -P "$pidfile")

  rm -f "$sock" "$pidfile"
  case "$mode" in
    unsafe|safe-*)
      cmd+=(-v -D nbdkit.backend.datapath=0) ;;
  esac
  if mode_has_filter "$mode"; then
    rm -f "$sidecar"            # each filter run starts with a new sidecar
    cmd+=(--filter="$FILTER" memory "$disk_size"
          dirtybitmap-file="$sidecar" dirtybitmap=b0)
    case "$mode" in
      unsafe) cmd+=(dirtybitmap-crash-safe=false) ;;
      safe-*) cmd+=(dirtybitmap-crash-safe=true
                    dirtybitmap-crash-granularity="${mode#safe-}") ;;
      bm*)
        cmd+=(dirtybitmap-control="$control")
        n="${mode%%-*}"
        n="${n#bm}"
        if [ "$BENCH_BITMAPS_ADD" = params ]; then
          for (( i = 1; i < n; i++ )); do cmd+=(dirtybitmap="b$i"); done
        fi
        case "$mode" in
          *-unsafe) cmd+=(dirtybitmap-crash-safe=false) ;;
        esac
        ;;
    esac
  else
    cmd+=(memory "$disk_size")
  fi
  "${cmd[@]}" >"$nbdkit_log" 2>&1 &
  nbdkit_pid=$!

  # nbdkit writes the PID file once it is ready to serve.
  for i in $(seq 100); do
    if [ -S "$sock" ] && [ -s "$pidfile" ]; then
      return 0
    fi
    if ! kill -0 "$nbdkit_pid" 2>/dev/null; then
      cat "$nbdkit_log" >&2
      die "nbdkit ($mode) exited before it was ready"
    fi
    sleep 0.1
  done
  cat "$nbdkit_log" >&2
  die "nbdkit ($mode) did not create $sock within 10 seconds"
}

# stop_nbdkit MODE: stop nbdkit cleanly and check how it exited.
stop_nbdkit ()
{
  local mode="$1" status=0 pid="$nbdkit_pid"

  [ "$(cat "$pidfile")" = "$pid" ] ||
    die "PID file says $(cat "$pidfile"), expected $pid"
  kill -TERM "$pid"
  wait "$pid" || status=$?
  nbdkit_pid=
  if [ "$status" -ne 0 ]; then
    cat "$nbdkit_log" >&2
    die "nbdkit ($mode) exited with status $status"
  fi
  if mode_has_filter "$mode"; then
    [ -s "$sidecar" ] || die "the filter run left no sidecar at $sidecar"
    # If QEMU's tools are here, check the bitmap was stored too.
    if command -v qemu-img >/dev/null 2>&1; then
      qemu-img info --output=json "$sidecar" >"$tmpdir/sidecar.json" ||
        die "qemu-img cannot read the sidecar left by the filter run"
      "$PYTHON" "$bench_dir/sidecar-has-bitmap.py" "$tmpdir/sidecar.json" b0 ||
        die "the filter run did not store bitmap b0"
    fi
  fi
}

# journal_counters: "COMMITS PAGES WAITS" from the journal line the
# filter logs at clean stop, or "- - -" if there is none (no journal).
journal_counters ()
{
  local line
  line="$(sed -n 's/.*dirtybitmap: journal: \([0-9]*\) commits (fdatasync), \([0-9]*\) pages written, \([0-9]*\) requests waited.*/\1 \2 \3/p' "$nbdkit_log" | tail -n1)"
  echo "${line:-- - -}"
}

# touched_bytes G: bytes in the G-byte regions (G a power of 2) of the
# disk holding any dirty part of bitmap b0 in the stopped run's
# sidecar, or "-" without QEMU's tools.  b0 has the default granularity
# (64K): a G below that is counted in 64K blocks, an upper bound.
touched_bytes ()
{
  local g="$1" map="$tmpdir/map.txt"
  [ "$g" -ge 65536 ] || g=65536
  if [ "$have_map" = 0 ]; then
    echo -
    return 0
  fi
  nbdinfo --map=qemu:dirty-bitmap:b0 -- \
    [ qemu-nbd -r -f qcow2 -B b0 "$sidecar" ] >"$map" ||
    die "could not read bitmap b0 from $sidecar"
  awk -v g="$g" -v size="$DISK_BYTES" '
    $4 == "dirty" {
      first = int($1 / g); last = int(($1 + $2 - 1) / g)
      for (i = first; i <= last; i++) seen[sprintf("%.0f", i)] = 1
    }
    END {
      n = 0
      for (k in seen) n++
      b = n * g
      if (b > size) b = size
      printf "%.0f\n", b
    }' "$map"
}

# run_bg ERRFILE CMD...: run CMD with stderr to ERRFILE and wait for it.
# It runs in the background so that a signal to this script is handled
# at once, and the EXIT trap can stop it.
run_bg ()
{
  local errfile="$1" status=0
  shift
  "$@" 2>"$errfile" &
  child_pid=$!
  wait "$child_pid" || status=$?
  child_pid=
  return "$status"
}

# run_fio MODE N SECONDS RAMP PREFILL: one timed run (after a prefill
# if PREFILL is 1, and the function named by $before_measuring, if
# any, called with MODE N); sets IOPS to the write IOPS and IOPS1 to
# those of the first second.
before_measuring=
run_fio ()
{
  local mode="$1" n="$2" seconds="$3" ramp="$4" prefill="$5"
  local out="$tmpdir/fio-$n-$mode.json" err="$tmpdir/fio-$n-$mode.err"
  local logdir="$tmpdir/iops-$n-$mode"

  if [ "$prefill" = 1 ] &&
     [ "$(size_bytes "$disk_size")" -gt "$DISK_BYTES" ] &&
     ! run_bg "$err" "${fio_pin[@]}" "$NBD_PYTHON" -m nbd -u "$uri" \
         -c "$(<"$bench_dir/zero-disk.py")"; then
    cat "$err" >&2
    die "zeroing the $disk_size disk ($mode, run $n) failed"
  fi
  if [ "$prefill" = 1 ] &&
     ! run_bg "$err" "${fio_pin[@]}" fio --name="prefill-$mode" \
           --ioengine=nbd --uri="$uri" --size="$REGION" \
           --rw=write --bs=1M --iodepth=8 --numjobs=1 \
           --output-format=json --output="$tmpdir/prefill.json"; then
    cat "$err" >&2
    die "fio prefill ($mode, run $n) failed"
  fi
  if [ -n "$before_measuring" ]; then
    "$before_measuring" "$mode" "$n"
  fi
  rm -rf "$logdir"
  mkdir "$logdir"
  if ! run_bg "$err" "${fio_pin[@]}" fio --name="randwrite-$mode" \
           --ioengine=nbd --uri="$uri" --size="$REGION" \
           --rw=randwrite --bs="$BLOCK_SIZE" \
           --iodepth="$BENCH_IODEPTH" --numjobs="$BENCH_NUMJOBS" \
           --time_based --runtime="$seconds" \
           --ramp_time="$ramp" \
           --group_reporting \
           --write_iops_log="$logdir/w" --log_avg_msec=1000 \
           --output-format=json --output="$out"; then
    cat "$err" >&2
    die "fio ($mode, run $n) failed"
  fi
  IOPS="$("$PYTHON" "$bench_dir/fio-iops.py" "$out")" ||
    die "could not read IOPS from fio ($mode, run $n)"
  IOPS1="$("$PYTHON" "$bench_dir/fio-first-second.py" "$logdir"/w_iops.*.log)" ||
    die "could not read the first second's IOPS from fio ($mode, run $n)"
}

# one_run MODE N SECONDS RAMP PREFILL: a whole run (nbdkit up, fio,
# nbdkit down); sets IOPS and IOPS1.  Not to be called in a subshell:
# the EXIT trap must know nbdkit_pid.
one_run ()
{
  local mode="$1" n="$2"
  start_nbdkit "$mode"
  run_fio "$@"
  stop_nbdkit "$mode"
}

# round_order ROUND MODES...: the modes in order for this round: as
# given in odd rounds, reversed in even ones (ABBA, ABC CBA).
round_order ()
{
  local r="$1" i
  shift
  local -a m=("$@")
  if [ $((r % 2)) -eq 1 ]; then
    echo "${m[*]}"
  else
    for (( i=${#m[@]}-1; i>=0; i-- )); do printf '%s ' "${m[$i]}"; done
    echo
  fi
}
