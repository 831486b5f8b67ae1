#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# At 64K granularity on a disk whose last granule is short, unaligned
# requests mark exactly the granules they touch: partial granules at
# both ends, nothing past a request that ends on a boundary, and the
# short last granule.  The expected map is worked out by hand.
#
# The disk (656360 bytes) is not a whole number of 512-byte sectors:
# the sidecar is sized up to 656384, as QEMU sizes such a disk, so the
# short last granule shows as 1024 bytes.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((10 * 65536 + 1000))     # 656360: granules 0..9 and 10 (1000 bytes)

nbdkit_filter -U - memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  dirtybitmap-granularity=64K \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c '
# 65506..65605: straddles granules 0 and 1.
h.pwrite(b\"s\" * 100, 65506)
# 131062..131071: ends exactly where granule 2 starts, granule 1 only.
h.pwrite(b\"e\" * 10, 131062)
# 208953: one byte in granule 3.
h.pwrite(b\"1\", 208953)
# 393211..524292: granules 5, 6, 7 and 8.
h.zero(131082, 393211)
# 589816..589823: ends exactly where granule 9 starts, granule 8 only.
h.pwrite(b\"b\" * 8, 589816)
# 656359: the last byte of the disk, in the short granule 10.
h.trim(1, 656359)
assert h.get_size() == 656360
'
  "

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "stored bitmap flags are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "0 131072
196608 65536
327680 262144
655360 1024"
