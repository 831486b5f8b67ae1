#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# dirtybitmap-in-use= decides what happens to a bitmap left in use
# that the journal cannot rebuild (here: its nbdkit ran with
# dirtybitmap-crash-safe=false and was killed).
#   keep:   warned about, left in use, untouched (QEMU's behaviour);
#   refuse: nbdkit does not start, exit 1, the sidecar byte-identical;
#   reset:  made all dirty and consistent, and it records writes again,
#           so the backup chain goes on with one full copy.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

size=$((16 * 1024 * 1024))
orig="$tmpdir/orig.qcow2"
start_nbdkit_background "$tmpdir/sock0" memory $size \
  dirtybitmap-file="$orig" dirtybitmap=lost dirtybitmap-crash-safe=false
/usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$tmpdir/sock0" \
  -c 'h.pwrite(b"x" * 512, 65536)'
kill -9 "$nbdkit_pid"
wait_nbdkit_exit
[ "$(bitmap_flags "$orig" lost)" = "in-use,auto 65536" ] ||
  fail "set-up: 'lost' is '$(bitmap_flags "$orig" lost)'"

# keep (the default, and explicitly): another bitmap does the tracking.
for arg in "" dirtybitmap-in-use=keep; do
  sidecar="$tmpdir/keep.qcow2"
  cp "$orig" "$sidecar"
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=new $arg \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"y\", 0)"' \
    2> "$tmpdir/keep.err" || { cat "$tmpdir/keep.err" >&2; fail "keep: failed"; }
  grep -qF "warning: $sidecar: bitmap 'lost' is marked in use and cannot be recovered" \
    "$tmpdir/keep.err" || { cat "$tmpdir/keep.err" >&2; fail "keep: no warning"; }
  [ "$(bitmap_flags "$sidecar" lost)" = "in-use,auto 65536" ] ||
    fail "keep: 'lost' is '$(bitmap_flags "$sidecar" lost)'"
  assert_map "$sidecar" new "0 65536"
  qemu_check "$sidecar"
done

# refuse: at start-up, before anyone is served.
sidecar="$tmpdir/refuse.qcow2"
cp "$orig" "$sidecar"
status=0
timeout 20 nbdkit -f -U "$tmpdir/sock-refuse" --filter="$FILTER" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=new dirtybitmap-in-use=refuse \
  2> "$tmpdir/refuse.err" || status=$?
[ $status -eq 1 ] || fail "refuse: exit status $status, expected 1"
grep -qF "error: $sidecar: bitmap 'lost' is marked in use and cannot be recovered (it was not protected by this filter's journal), so it may miss writes; dirtybitmap-in-use=refuse stops here" \
  "$tmpdir/refuse.err" || { cat "$tmpdir/refuse.err" >&2; fail "refuse: wrong error"; }
grep -qF "qemu-img bitmap --remove $sidecar lost" "$tmpdir/refuse.err" ||
  fail "refuse: no remedy"
cmp "$sidecar" "$orig" || fail "refuse: the sidecar changed"

# reset: all dirty at once, then tracking as usual.
sidecar="$tmpdir/reset.qcow2"
cp "$orig" "$sidecar"
nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
  dirtybitmap-in-use=reset \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.flush()"' \
  2> "$tmpdir/reset.err" || { cat "$tmpdir/reset.err" >&2; fail "reset: failed"; }
grep -qF "warning: $sidecar: bitmap 'lost' was marked in use and could not be recovered (it was not protected by this filter's journal): it is reset to all dirty and records writes again" \
  "$tmpdir/reset.err" || { cat "$tmpdir/reset.err" >&2; fail "reset: no warning"; }
[ "$(bitmap_flags "$sidecar" lost)" = "auto 65536" ] ||
  fail "reset: 'lost' is '$(bitmap_flags "$sidecar" lost)'"
assert_map "$sidecar" lost "0 $size"
qemu_check "$sidecar"
# The backup that copied everything clears it; the next writes show.
qemu-img bitmap --clear "$sidecar" lost
nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
  dirtybitmap-in-use=reset \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"z\", 3 * 65536)"'
assert_map "$sidecar" lost "196608 65536"
qemu_check "$sidecar"

# A bad value is refused.
status=0
timeout 20 nbdkit -f -U "$tmpdir/sock-bad" --filter="$FILTER" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-in-use=maybe \
  2> "$tmpdir/bad.err" || status=$?
[ $status -eq 1 ] || fail "bad value: exit status $status"
grep -qF "dirtybitmap-in-use=maybe: must be keep" "$tmpdir/bad.err" ||
  { cat "$tmpdir/bad.err" >&2; fail "bad value: wrong error"; }
