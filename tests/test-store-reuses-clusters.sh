#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Clusters freed by one store are reused by the next: over 100
# start/write/stop cycles the sidecar stops growing after the second
# cycle, stays clean for qemu-img check, and the bitmap holds every
# cycle's write.  The disk and granularity give 4 clusters of bitmap
# data, all dirtied by the first cycle, so from then on every store
# places 6 clusters (data, table, directory) while the previous 6 are
# still referenced; those must be the ones the next store reuses.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires stat

sidecar="$tmpdir/sidecar.qcow2"
size=$((1024 * 1024 * 1024))
cycles=100
: > "$tmpdir/requests"

for (( i = 1; i <= cycles; i++ )); do
  offsets=$(( (i * 7919 * 65536 + i * 512) % size ))
  (( i > 1 )) || offsets+=" 0 268435456 536870912 805306368"
  py=""
  for offset in $offsets; do
    echo "$offset 4096" >> "$tmpdir/requests"
    py+="h.pwrite(b\"c\" * 4096, $offset); "
  done
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=b0 dirtybitmap-granularity=512 \
    --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c '$py'"
  sizes[i]=$(stat -c %s "$sidecar")
done

echo "sidecar size after each cycle (count size):" $(printf '%s\n' "${sizes[@]}" | uniq -c)
for (( i = 3; i <= cycles; i++ )); do
  [ "${sizes[i]}" -eq "${sizes[2]}" ] ||
    fail "the sidecar grew to ${sizes[i]} bytes at cycle $i (${sizes[2]} after cycle 2)"
done
qemu_check "$sidecar"
assert_map "$sidecar" b0 "$(expected_map 512 $size < "$tmpdir/requests")"
