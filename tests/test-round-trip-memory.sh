#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Writes, zeroes and trims through the memory plugin are recorded in a
# new sidecar: in use while nbdkit runs, stored consistent at exit,
# and served by qemu-nbd with exactly the touched granules dirty.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((1024 * 1024 * 1024))

nbdkit_filter -U - memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c '
h.pwrite(b\"x\" * 4096, 1048576)
h.zero(196608, 10485760)
h.trim(100, 536870912)
h.pread(4096, 0)
h.flush()
'
    qemu-img info -U --output=json '$sidecar' > '$tmpdir/running.json'
  "

# While running: the bitmap existed, in use, recording.
grep -q '"in-use"' "$tmpdir/running.json" ||
  fail "bitmap not in use while nbdkit ran"

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "stored bitmap flags are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "1048576 65536
10485760 196608
536870912 65536"
