#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# dirtybitmap-granularity= sets the granularity of the bitmap the
# filter creates, and unaligned requests (one of them touching the
# last byte, in a short last granule) mark exactly the granules they
# touch, from 512 bytes to 2 GiB.
#
# Disk sizes are not multiples of the granularity, nor of 512: QEMU
# sees the sidecar in whole sectors, so the last granule's dirty range
# ends at the size rounded up to 512.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

K=1024 M=$((1024 * 1024)) G=$((1024 * 1024 * 1024))

# option  granularity  disk size
cases="512 512 $((100 * 512 + 300))
4K $((4 * K)) $((100 * 4 * K + 1537))
64K $((64 * K)) $((40 * 64 * K + 12345))
1M $M $((20 * M + M / 2 + 777))
2G $((2 * G)) $((13 * G + 12345))"

while read -r opt g size; do
  sidecar="$tmpdir/sidecar-$opt.qcow2"
  n=$(( (size + g - 1) / g ))    # granules, the last one short
  # kind offset length: straddles granules 0 and 1, inside granule 3,
  # the last byte of the disk, and a 1-byte write inside granule n-3.
  requests="pwrite $((g - 1)) 2
zero $((3 * g + g / 2)) 3
trim $((size - 1)) 1
pwrite $(( (n - 3) * g + g / 2 + 1)) 1"

  py=""
  while read -r kind off len; do
    case $kind in
      pwrite) py+="h.pwrite(b\"w\" * $len, $off)"$'\n' ;;
      *)      py+="h.$kind($len, $off)"$'\n' ;;
    esac
  done <<< "$requests"

  nbdkit_filter -U - memory $size \
    dirtybitmap-file="$sidecar" dirtybitmap=b0 \
    dirtybitmap-granularity=$opt \
    --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c '$py'"

  qemu_check "$sidecar"
  [ "$(bitmap_flags "$sidecar" b0)" = "auto $g" ] ||
    fail "granularity $opt: flags are '$(bitmap_flags "$sidecar" b0)'"
  expected="$(cut -d' ' -f2- <<< "$requests" | expected_map $g $size)"
  assert_map "$sidecar" b0 "$expected"
done <<< "$cases"
