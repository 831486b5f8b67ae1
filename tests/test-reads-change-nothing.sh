#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A connection that only reads, caches, flushes and asks for block
# status leaves an existing dirty map exactly as it was.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

disk="$tmpdir/disk.img"
sidecar="$tmpdir/sidecar.qcow2"
size=$((16 * 1024 * 1024))
truncate -s $size "$disk"

# Run 1 makes some dirty ranges.
nbdkit_filter -U - file "$disk" \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c '
h.pwrite(b\"a\" * 1000, 200000)
h.zero(131072, 4194304)
'
  "
qemu_check "$sidecar"
map_before="196608 65536
4194304 131072"
assert_map "$sidecar" b0 "$map_before"

# Run 2 only reads, across the whole disk and across the dirty ranges.
nbdkit_filter -U - file "$disk" \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  --run "
    /usr/bin/python3 -m nbd --base-allocation -u \"\$uri\" -c '
assert not h.is_read_only()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.pread(1000, 200000) == b\"a\" * 1000
assert h.pread(65536, 8388608 - 100) == bytes(65536)
h.cache(1048576, 0)
h.cache(1, $((size - 1)))
h.flush()
seen = []
def extent(metacontext, offset, entries, err):
    seen.append((metacontext, offset, list(entries)))
    return 0
h.block_status($size, 0, extent)
h.block_status(4096, $((size - 4096)), extent)
assert len(seen) == 2, seen
assert all(m == nbd.CONTEXT_BASE_ALLOCATION and e for m, _, e in seen), seen
assert h.pread(512, $((size - 512))) == bytes(512)
h.flush()
'
  "

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "stored bitmap flags are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "$map_before"
