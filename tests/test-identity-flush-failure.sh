#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The data's identity is recorded only after the data is flushed at the
# stop.  When that flush fails (an eval plugin over the file, whose
# flush always fails, named by dirtybitmap-data=), a warning says
# so, the bitmaps are still stored, and the identity taken when the
# session began stays: the next start checks the data as after a
# crash, so the filter's own writes do not make the bitmap stale.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
disk="$tmpdir/disk.img" sidecar="$tmpdir/disk.qcow2"
truncate -s $size "$disk"

requires dd
nbdkit_filter -U - eval \
  get_size="echo $size" can_write='exit 0' can_flush='exit 0' \
  pread="dd if='$disk' skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="dd of='$disk' seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
  flush='echo "the disk refuses to flush" >&2; exit 1' \
  dirtybitmap-data="$disk" dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"f\" * 512, 65536)"' \
  2> "$tmpdir/1.err" || :
grep -qF "warning: $sidecar: the data could not be flushed at the stop: its identity is not recorded" \
  "$tmpdir/1.err" || { cat "$tmpdir/1.err" >&2; fail "no warning"; }
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "'b' is '$(bitmap_flags "$sidecar" b)'"

nbdkit_filter -U - file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"g\" * 512, 3 * 65536)"' \
  2> "$tmpdir/2.err"
if grep -q "written without this filter" "$tmpdir/2.err"; then
  cat "$tmpdir/2.err" >&2
  fail "called stale after the failed flush"
fi
assert_map "$sidecar" b "$(printf '65536 512\n196608 512\n' |
                           expected_map 65536 $size)"
qemu_check "$sidecar"
