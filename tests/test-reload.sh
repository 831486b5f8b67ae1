#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A second nbdkit run on the same sidecar and bitmap keeps what the
# first run recorded and adds its own writes: the stored map is the
# union of both runs.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((32 * 1024 * 1024))

run ()
{
  nbdkit_filter -U - memory $size \
    dirtybitmap-file="$sidecar" dirtybitmap=b0 \
    --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c '$1'"
}

# Run 1, range A: granule 1, granules 10..12, granule 100.
run '
h.pwrite(b"a" * 10, 100000)
h.zero(3 * 65536 - 1, 655360)
h.trim(1, 100 * 65536)
'
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "flags after run 1 are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "65536 65536
655360 196608
6553600 65536"

# Run 2, range B: granule 1 again, granules 12..14 (overlapping A),
# granule 2 (adjacent to A), and the last granule.
run "
h.pwrite(b\"b\", 65536)
h.pwrite(b\"b\" * 131072, 12 * 65536 + 5)
h.zero(10, 2 * 65536 + 7)
h.trim(65536, $((size - 65536)))
"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "flags after run 2 are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "65536 131072
655360 327680
6553600 65536
$((size - 65536)) 65536"
