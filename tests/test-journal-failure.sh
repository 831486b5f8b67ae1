#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# When the durable mark cannot be written (fdatasync fails with EIO,
# injected by the test shim powerloss.so), a write, zero or trim to a region not yet
# durable fails with EIO and never reaches the plugin; requests to
# regions already durable go on.  After a failed flush nothing more is
# trusted to reach the disk, so new regions keep failing even once the
# disk recovers, until nbdkit restarts.  The clean stop still stores
# the bitmap, holding only what reached the plugin.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout
shim="$abs_top_builddir/tests/helpers/.libs/powerloss.so"
[ -f "$shim" ] || fail "$shim is not built (make check builds it)"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/sock"
M=$((1024 * 1024))
eio="$tmpdir/eio"
nbdkit_under=(env LD_PRELOAD="$shim" POWERLOSS_FILE="$sidecar"
              POWERLOSS_EIO_FLAG="$eio")
start_nbdkit_background "$sock" memory 64M dirtybitmap-file="$sidecar" \
  dirtybitmap=b0
nbd () { /usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$sock" -c "$1"; }

nbd 'h.pwrite(b"a" * 512, 0)'
touch "$eio"
nbd "
def refused(what, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errno == 'EIO', '%s: %s' % (what, e.errno)
        return
    raise AssertionError('%s was served although its mark is not durable' % what)
refused('write', lambda: h.pwrite(b'b' * 512, 8 * $M))
refused('zero', lambda: h.zero(4096, 16 * $M))
refused('trim', lambda: h.trim(4096, 24 * $M))
# Region 0 is durable already: served.
h.pwrite(b'c' * 512, 4096)
# The plugin never saw the refused requests.
assert h.pread(512, 8 * $M) == bytes(512), 'the refused write reached the plugin'
assert h.pread(512, 4096) == b'c' * 512
"
grep -qF "journal to stable storage: Input/output error" "$sock.err" ||
  { cat "$sock.err" >&2; fail "no error for the failed journal flush"; }
rm "$eio"
nbd "
try:
    h.pwrite(b'd' * 512, 32 * $M)
    raise AssertionError('a new region was served after a failed flush')
except nbd.Error as e:
    pass
"
kill "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "b0 is '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "0 65536"
qemu_check "$sidecar"
