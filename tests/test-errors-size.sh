#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A sidecar made for a 1 GiB export is refused for a 2 GiB export at
# start-up, with an error naming both sizes, and is left byte-identical.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

sidecar="$tmpdir/sidecar.qcow2"
gib=$((1024 * 1024 * 1024))

# The sidecar of a 1 GiB export, made by the filter, with data.
nbdkit_filter -U - memory $gib dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"x\", 12345)'"
qemu_check "$sidecar"
assert_map "$sidecar" b "0 65536"
cp "$sidecar" "$tmpdir/sidecar.orig"

# The sidecar of a 1 GiB disk, made by qemu-img.
qsidecar="$tmpdir/qemu-made.qcow2"
qemu-img create -q -f qcow2 "$qsidecar" 1G
qemu-img bitmap --add "$qsidecar" b
cp "$qsidecar" "$tmpdir/qemu-made.orig"

n=0
for sc in "$sidecar" "$qsidecar"; do
  for names in "dirtybitmap=b" "" "dirtybitmap=other"; do
    n=$((n + 1))
    status=0
    timeout 20 nbdkit -f -U "$tmpdir/sock$n" --filter="$FILTER" \
      memory $((2 * gib)) dirtybitmap-file="$sc" $names \
      > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
    [ $status -eq 1 ] || {
      cat "$tmpdir/err" >&2
      fail "$sc '$names': 2 GiB export, 1 GiB sidecar: exit status $status"
    }
    grep -qF "error: $sc: the sidecar's virtual size is 1073741824 bytes but the export is 2147483648 bytes" \
      "$tmpdir/err" || {
      cat "$tmpdir/err" >&2
      fail "$sc '$names': no error naming both sizes"
    }
  done
done
cmp "$sidecar" "$tmpdir/sidecar.orig" ||
  fail "the refused start-ups changed the filter-made sidecar"
cmp "$qsidecar" "$tmpdir/qemu-made.orig" ||
  fail "the refused start-ups changed the qemu-img-made sidecar"

qemu_check "$sidecar"
assert_map "$sidecar" b "0 65536"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "flags of 'b' are '$(bitmap_flags "$sidecar" b)'"
