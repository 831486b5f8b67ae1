#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Without crash safety (dirtybitmap-crash-safe=false, QEMU's
# behaviour), bitmaps whose nbdkit was killed stay marked in use on
# disk and cannot be recovered.  The next run (crash-safe, default
# policy keep) warns about each of them, keeps them in use (QEMU
# refuses them) and leaves the sidecar consistent, while a new bitmap
# named in that run records writes as usual.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/sock"
size=$((16 * 1024 * 1024))

# Run 1, killed: two bitmaps recording, one write.
start_nbdkit_background "$sock" memory $size dirtybitmap-crash-safe=false \
  dirtybitmap-file="$sidecar" dirtybitmap=killed1 dirtybitmap=killed2
[ "$(cat "$sock.pid")" = "$nbdkit_pid" ] ||
  fail "pid file does not hold nbdkit's pid"
/usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$sock" -c '
h.pwrite(b"k" * 10, 70000)
'
for b in killed1 killed2; do
  [ "$(bitmap_flags -U "$sidecar" $b)" = "in-use,auto 65536" ] ||
    fail "$b while run 1 ran: flags '$(bitmap_flags -U "$sidecar" $b)'"
done
kill -9 "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 137 ] || fail "nbdkit was not killed by SIGKILL (status $status)"

for b in killed1 killed2; do
  [ "$(bitmap_flags "$sidecar" $b)" = "in-use,auto 65536" ] ||
    fail "$b after kill -9: flags '$(bitmap_flags "$sidecar" $b)'"
done
qemu_check "$sidecar"

# Run 2, clean: names killed1 (not killed2) and a new bitmap.
nbdkit_filter -U - memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=killed1 dirtybitmap=fresh \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c '
h.pwrite(b\"f\" * 3, 65536 * 5 - 1)
h.zero(1, $((size - 1)))
'
  " 2> "$tmpdir/run2.err" ||
  { cat "$tmpdir/run2.err" >&2; fail "run 2 failed"; }

for b in killed1 killed2; do
  grep -qF "bitmap '$b' is marked in use and cannot be recovered (it was not protected by this filter's journal)" "$tmpdir/run2.err" ||
    { cat "$tmpdir/run2.err" >&2; fail "run 2 did not warn about '$b'"; }
  grep -qF "qemu-img bitmap --remove $sidecar $b" "$tmpdir/run2.err" ||
    { cat "$tmpdir/run2.err" >&2; fail "run 2 did not say how to remove '$b'"; }
done

qemu_check "$sidecar"
for b in killed1 killed2; do
  [ "$(bitmap_flags "$sidecar" $b)" = "in-use,auto 65536" ] ||
    fail "$b after run 2: flags '$(bitmap_flags "$sidecar" $b)'"
  if nbdinfo --size -- [ qemu-nbd -r -f qcow2 -B $b "$sidecar" ] \
       > /dev/null 2> "$tmpdir/qemu-nbd.err"; then
    fail "qemu-nbd -B $b accepted a bitmap that is in use"
  fi
  grep -qF "Bitmap '$b' is inconsistent" "$tmpdir/qemu-nbd.err" ||
    { cat "$tmpdir/qemu-nbd.err" >&2; fail "qemu-nbd -B $b: unexpected error"; }
done
[ "$(bitmap_flags "$sidecar" fresh)" = "auto 65536" ] ||
  fail "fresh after run 2: flags '$(bitmap_flags "$sidecar" fresh)'"
assert_map "$sidecar" fresh "262144 131072
$((size - 65536)) 65536"
