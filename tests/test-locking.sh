#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The filter takes QEMU's image locks on the sidecar: from start-up,
# QEMU's tools cannot write it (qemu-img info -U still reads it), a
# second nbdkit on the same sidecar refuses to start, and the filter
# refuses a sidecar that qemu-nbd holds for writing.  With nbdkit -r
# only the read-side locks are taken: plain qemu-img info works.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout

sidecar="$tmpdir/sidecar.qcow2"
qemu-img create -q -f qcow2 "$sidecar" 64M
qemu-img bitmap --add "$sidecar" b0

start ()
{
  start_nbdkit_background "$1" memory 64M dirtybitmap-file="$sidecar" "${@:2}"
}
stop ()
{
  kill "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] || fail "nbdkit exited with status $status"
}

# 1. From start-up, before any client: QEMU may read with -U only.
start "$tmpdir/s1"
if qemu-img bitmap --add "$sidecar" intruder 2> "$tmpdir/qemu.err"; then
  fail "qemu-img bitmap could write the sidecar nbdkit holds"
fi
grep -q 'Failed to get "write" lock' "$tmpdir/qemu.err" ||
  fail "qemu-img failed for another reason: $(cat "$tmpdir/qemu.err")"
qemu-img info -U "$sidecar" >/dev/null || fail "qemu-img info -U failed"

# After a client wrote: the bitmap is in use, and still locked.
/usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$tmpdir/s1" \
  -c 'h.pwrite(b"x" * 512, 65536)'
[ "$(bitmap_flags -U "$sidecar" b0)" = "in-use,auto 65536" ] ||
  fail "b0 is not in use while tracking"
qemu-img check "$sidecar" >/dev/null 2>&1 &&
  fail "qemu-img check (without -U) opened the sidecar nbdkit writes"

# 2. A second nbdkit on the same sidecar refuses to start.
if timeout 20 nbdkit -f -U "$tmpdir/s2" --filter="$FILTER" memory 64M \
     dirtybitmap-file="$sidecar" 2> "$tmpdir/second.err"; then
  fail "a second nbdkit started on the same sidecar"
fi
grep -q "the sidecar is in use by another program" "$tmpdir/second.err" ||
  fail "second nbdkit: unexpected error: $(cat "$tmpdir/second.err")"

stop
qemu_check "$sidecar"
assert_map "$sidecar" b0 "65536 65536"

# 3. While qemu-nbd has the sidecar open for writing, the filter
# refuses to start and changes nothing.
qemu-nbd -f qcow2 -k "$tmpdir/qemu.sock" --pid-file="$tmpdir/qemu.pid" \
  "$sidecar" &
cleanup_fn 'kill $(cat "$tmpdir/qemu.pid") 2>/dev/null'
for (( i = 0; i < 100; i++ )); do
  [ -s "$tmpdir/qemu.pid" ] && [ -S "$tmpdir/qemu.sock" ] && break
  sleep 0.1
done
[ -S "$tmpdir/qemu.sock" ] || fail "qemu-nbd did not start"
# qemu-nbd itself rewrites the bitmaps when it opens and closes the
# image, so compare only across the refused nbdkit.
cp "$sidecar" "$tmpdir/before"
if timeout 20 nbdkit -f -U "$tmpdir/s3" --filter="$FILTER" memory 64M \
     dirtybitmap-file="$sidecar" 2> "$tmpdir/third.err"; then
  fail "nbdkit started on a sidecar qemu-nbd writes"
fi
grep -q "the sidecar is in use by another program .* that writes to it" \
  "$tmpdir/third.err" ||
  fail "unexpected error: $(cat "$tmpdir/third.err")"
cmp "$sidecar" "$tmpdir/before" ||
  fail "the refused nbdkit changed the sidecar"
kill "$(cat "$tmpdir/qemu.pid")"
for (( i = 0; i < 100; i++ )); do
  kill -0 "$(cat "$tmpdir/qemu.pid")" 2>/dev/null || break
  sleep 0.1
done

# 4. nbdkit -r takes only the read-side locks.
start "$tmpdir/s4" -r
qemu-img info "$sidecar" >/dev/null || fail "qemu-img info refused under -r"
qemu-img bitmap --add "$sidecar" intruder 2>/dev/null &&
  fail "qemu-img could write the sidecar while nbdkit -r reads it"
stop
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" intruder)" = absent ] ||
  fail "a refused qemu-img left a bitmap behind"
