#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The filter marks a write before the plugin sees it, so a write or
# zero that the layer below fails is still recorded as dirty (the
# data may have partly changed) while the client gets the error.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((8 * 1024 * 1024))

# Ours is the first --filter (outermost); the error filter below it
# fails every pwrite with EIO and every zero with ENOSPC.
nbdkit_filter --filter=error -U - memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  error-pwrite=EIO error-pwrite-rate=100% \
  error-zero=ENOSPC error-zero-rate=100% \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c '
import errno
try:
    h.pwrite(b\"x\" * 4096, 1048576 - 100)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise AssertionError(\"pwrite did not fail\")
try:
    h.zero(65536, 3 * 1048576)
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
else:
    raise AssertionError(\"zero did not fail\")
# Nothing reached the plugin; a successful trim is marked as usual.
assert h.pread(4096, 1048576 - 100) == bytes(4096)
h.trim(1, 5 * 1048576)
'
  " 2> "$tmpdir/stderr" || { cat "$tmpdir/stderr" >&2; fail "nbdkit or the client failed"; }

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "stored bitmap flags are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "983040 131072
3145728 65536
5242880 65536"
