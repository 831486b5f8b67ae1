#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# When the sidecar cannot be flushed (fdatasync fails with EIO, injected
# with libfiu): a store at shutdown fails loudly, nbdkit exits 1, and
# the bitmap stays in use (never a stale bitmap that looks consistent),
# with no cluster leaked, and the journal still protects it; flagging a
# bitmap in use at the first writer fails the same way, refuses that
# client, stops nbdkit with status 1 and leaves the sidecar
# byte-identical.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires fiu-run fiu-ctrl timeout

sidecar="$tmpdir/sidecar.qcow2"
qemu-img create -q -f qcow2 "$sidecar" 64M
qemu-img bitmap --add "$sidecar" b0
cp "$sidecar" "$tmpdir/orig"
fail_fdatasync='enable name=posix/io/sync/fdatasync,failinfo=5'   # EIO

# 1. The store at shutdown cannot be flushed.
nbdkit_under=(fiu-run -x)
start_nbdkit_background "$tmpdir/s1" memory 64M dirtybitmap-file="$sidecar"
/usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$tmpdir/s1" \
  -c 'h.pwrite(b"x" * 512, 65536)'
[ "$(bitmap_flags -U "$sidecar" b0)" = "in-use,auto 65536" ] ||
  fail "b0 is not in use while tracking"
fiu-ctrl -c "$fail_fdatasync" "$(cat "$tmpdir/s1.pid")"
kill "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 1 ] || fail "nbdkit exited $status after a failed store"
grep -q "flushing bitmaps to stable storage: Input/output error" \
  "$tmpdir/s1.err" || fail "no error for the failed flush"
grep -q "the bitmaps could not be stored, so they stay marked in use; the journal still protects them" \
  "$tmpdir/s1.err" || fail "no remedy for the failed store"
[ "$(bitmap_flags "$sidecar" b0)" = "in-use,auto 65536" ] ||
  fail "after a failed store b0 is '$(bitmap_flags "$sidecar" b0)'"
qemu_check "$sidecar"
# Once the disk is healthy, the next start rebuilds b0 from the journal.
nbdkit_filter -U - memory 64M dirtybitmap-file="$sidecar" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.flush()"'
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "after a restart b0 is '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "0 1048576"
qemu_check "$sidecar"

# 2. IN_USE cannot be flagged when the first writer connects: with
# crash safety, the copy-on-write commit that also writes the journal
# fails at its first flush ("bitmaps"); without, QEMU's in-place dance
# fails at its first ("header").  Either way the file is as it was.
for mode in "true bitmaps" "false header"; do
  set -- $mode
  cp "$tmpdir/orig" "$sidecar"
  nbdkit_under=(fiu-run -x -c "$fail_fdatasync")
  start_nbdkit_background "$tmpdir/s2$1" memory 64M \
    dirtybitmap-file="$sidecar" dirtybitmap-crash-safe=$1
  if /usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$tmpdir/s2$1" \
       -c 'h.pwrite(b"x" * 512, 65536)' 2>/dev/null; then
    fail "crash-safe=$1: a write was served although no bitmap could record it"
  fi
  wait_nbdkit_exit
  [ "$status" -eq 1 ] ||
    fail "crash-safe=$1: nbdkit exited $status after failing to start"
  grep -q "flushing $2 to stable storage: Input/output error" \
    "$tmpdir/s2$1.err" ||
    { cat "$tmpdir/s2$1.err" >&2; fail "crash-safe=$1: no error for the failed flush"; }
  cmp "$sidecar" "$tmpdir/orig" || fail "crash-safe=$1: the sidecar changed"
  [ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
    fail "crash-safe=$1: b0 is '$(bitmap_flags "$sidecar" b0)'"
  qemu_check "$sidecar"
done
