# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh.
#
# Phase "views": what a point-in-time view costs the writes, against
# QEMU's peer.  4 KiB random writes over a 1 GiB raw file (filled with
# data once, so that a copy is a real copy), served by:
#   f-none     nbdkit's file plugin with the filter (control socket), no
#              view
#   f-new      the same, a view of the whole disk added just before the
#              measured writes (the first write to each granule copies it)
#   f-copied   the same, the view added and then every granule copied
#              (one sequential 1M-block pass over the disk) first
#   q-none     qemu-storage-daemon exporting the file
#   q-new      qemu-storage-daemon: a copy-before-write node over the
#              file, its target a fresh qcow2, a snapshot-access export
#              of it beside the writable one (QEMU's fleecing)
#   q-copied   the same after one sequential pass
# Every run starts its server anew; runs alternate (ABC...CBA).  No
# ramp time: the first overwrites are what f-new and q-new measure.
# Reported: medians, each mode against its "none" (target f-copied /
# f-none >= 0.95), the filter against qemu-storage-daemon mode by
# mode, and the scratch space per GiB written of f-new and q-new (the
# view's scratch-bytes; the target qcow2's allocated bytes).

views_modes="f-none f-new f-copied"
views_qsd_note="qemu-storage-daemon not installed (apt-get install qemu-system-common): q-* modes skipped"
if command -v qemu-storage-daemon >/dev/null 2>&1; then
  views_modes+=" q-none q-new q-copied"
  views_qsd_note="$(qemu-storage-daemon --version | head -n1)"
fi

# describe_views: the phase's settings, for the header.
describe_views ()
{
  echo "  phase views:    modes $views_modes"
  echo "                  raw file of 1G in the sidecar directory, filled once; file plugin"
  echo "                  time_based runtime=${BENCH_VIEWS_SECONDS}s, no ramp (BENCH_VIEWS_SECONDS)"
  echo "                  rounds: $BENCH_VIEWS_ROUNDS (BENCH_VIEWS_ROUNDS), ABC...CBA order"
  echo "                  peer: $views_qsd_note"
}

views_disk="$sidecar_dir/views-disk.raw"
views_target="$sidecar_dir/views-fleece.qcow2"

# views_start MODE: start the server of MODE on $sock, wait until it
# serves.  The server's pid goes in nbdkit_pid, so that the EXIT trap
# stops it whatever it is.
views_start ()
{
  local mode="$1" i
  local -a cmd

  rm -f "$sock" "$pidfile" "$control" "$sidecar"
  case "$mode" in
    f-*)
      cmd=("${nbdkit_pin[@]}" nbdkit -f -U "$sock" -P "$pidfile"
           --filter="$FILTER" file "$views_disk"
           dirtybitmap-file="$sidecar" dirtybitmap=b0
           dirtybitmap-control="$control") ;;
    q-none)
      cmd=("${nbdkit_pin[@]}" qemu-storage-daemon
           --blockdev driver=file,node-name=disk,filename="$views_disk"
           --nbd-server addr.type=unix,addr.path="$sock"
           --export type=nbd,id=live,node-name=disk,name=,writable=on
           --pidfile "$pidfile") ;;
    q-*)
      rm -f "$views_target"
      qemu-img create -q -f qcow2 "$views_target" 1G ||
        die "could not create $views_target"
      cmd=("${nbdkit_pin[@]}" qemu-storage-daemon
           --blockdev driver=file,node-name=disk,filename="$views_disk"
           --blockdev driver=file,node-name=target-file,filename="$views_target",discard=unmap
           --blockdev driver=qcow2,node-name=target,file=target-file,discard=unmap
           --blockdev driver=copy-before-write,node-name=cbw,file=disk,target=target
           --blockdev driver=snapshot-access,node-name=view,file=cbw
           --nbd-server addr.type=unix,addr.path="$sock"
           --export type=nbd,id=live,node-name=cbw,name=,writable=on
           --export type=nbd,id=view,node-name=view,name=view
           --pidfile "$pidfile") ;;
  esac
  "${cmd[@]}" >"$nbdkit_log" 2>&1 &
  nbdkit_pid=$!
  for i in $(seq 100); do
    if [ -S "$sock" ] && [ -s "$pidfile" ] &&
       { [ "${mode#f-}" = "$mode" ] || [ -S "$control" ]; }; then
      return 0
    fi
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$nbdkit_log" >&2
  die "the server of $mode did not start"
}

# views_sequential MODE N: one sequential 1M-block pass over the disk.
views_sequential ()
{
  local err="$tmpdir/seq-$2-$1.err"
  run_bg "$err" "${fio_pin[@]}" fio --name="pass-$1" --ioengine=nbd \
    --uri="$uri" --size=1G --rw=write --bs=1M --iodepth=8 --numjobs=1 \
    --output-format=json --output="$tmpdir/pass.json" || {
    cat "$err" >&2
    die "the sequential pass ($1, run $2) failed"
  }
}

# views_prepare MODE N: run_fio's hook: add the view, copy everything,
# and let the page cache settle.
views_prepare ()
{
  case "$1" in
    f-new|f-copied)
      "$PYTHON" "$bench_dir/views-qmp.py" "$control" \
        "$abs_top_srcdir/tests/helpers" add ||
        die "could not add the view ($1, run $2)" ;;
  esac
  case "$1" in
    *-copied) views_sequential "$@" ;;
  esac
  # Every mode starts from clean page cache: otherwise the copied modes
  # would also measure the kernel writing back the 2 GiB their pass
  # just dirtied (disk and scratch), which belongs to the pass.
  sync
}

# views_scratch MODE: the scratch bytes in use after the run.
views_scratch ()
{
  case "$1" in
    f-none|q-none) echo 0 ;;
    f-*) "$PYTHON" "$bench_dir/views-qmp.py" "$control" \
           "$abs_top_srcdir/tests/helpers" scratch ;;
    q-*) echo $(( $(stat -c '%b * %B' "$views_target") )) ;;
  esac
}

# phase_views: the runs and their summary.
phase_views ()
{
  local round mode run results scratch written

  echo "== phase views: writes while a view exists, the filter and qemu-storage-daemon =="
  if [ ! -s "$views_disk" ]; then
    run_bg "$tmpdir/fill.err" fio --name=fill --filename="$views_disk" \
      --rw=write --bs=1M --size=1G --output=/dev/null ||
      die "could not fill $views_disk: $(cat "$tmpdir/fill.err")"
  fi
  before_measuring=views_prepare
  results="$tmpdir/results-views"
  : >"$results"
  printf '%-4s %-5s %-9s %12s %14s %14s %14s\n' run round mode "write IOPS" \
    "first second" "GiB written" "scratch bytes"
  run=0
  for round in $(seq "$BENCH_VIEWS_ROUNDS"); do
    # shellcheck disable=SC2086
    for mode in $(round_order "$round" $views_modes); do
      run=$((run + 1))
      views_start "$mode"
      run_fio "$mode" "views$run" "$BENCH_VIEWS_SECONDS" 0 0
      scratch="$(views_scratch "$mode")" ||
        die "could not read the scratch space ($mode, run $run)"
      written="$("$PYTHON" "$bench_dir/fio-written.py" \
                   "$tmpdir/fio-views$run-$mode.json")" ||
        die "could not read the bytes written ($mode, run $run)"
      stop_nbdkit "$mode"
      echo "$round $mode $IOPS $IOPS1 $written $scratch" >>"$results"
      printf '%-4s %-5s %-9s %12s %14s %14s %14s\n' "$run" "$round" \
        "$mode" "$IOPS" "$IOPS1" \
        "$(awk -v w="$written" 'BEGIN { printf "%.3f", w / 1073741824 }')" \
        "$scratch"
    done
  done
  before_measuring=
  echo

  "$PYTHON" "$bench_dir/summarise-views.py" "$results" "$VIEWS_TARGET" \
    "$summary" || die "could not summarise the views phase"
  echo
}
