#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# What the filter does not own it keeps: after a run, a sidecar's guest
# data, internal snapshot, feature name table, unknown header
# extension, external data file name and disabled (not recording) bitmap
# are exactly as they were, while unknown autoclear bits are cleared
# as the qcow2 spec requires of a writer.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires qemu-io md5sum
edit="/usr/bin/python3 $abs_top_srcdir/tests/helpers/header-edit.py"
size=$((64 * 1024 * 1024))

# Everything QEMU's tools can say about a sidecar, bitmaps aside.
snapshot_of ()
{
  local img="$1"
  qemu-img convert -U -O raw "$img" "$tmpdir/guest.raw"
  md5sum < "$tmpdir/guest.raw"
  if qemu-img snapshot -U -l "$img" | grep -q snap1; then
    qemu-img snapshot -U -l "$img" | awk 'NR > 2 { print $1, $2, $3 }'
    qemu-img convert -U -O raw -l snapshot.name=snap1 "$img" "$tmpdir/snap.raw"
    md5sum < "$tmpdir/snap.raw"
  fi
  $edit "$img" exts | grep -v '^23852875'   # all but the bitmaps extension
  dirty_map "$img" off
  bitmap_flags "$img" off
}

run_filter ()
{
  nbdkit_filter -U - memory $size dirtybitmap-file="$1" dirtybitmap=b0 \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "
h.pwrite(b\"x\" * 4096, 1048576)
h.zero(65536, 33554432)
"'
}

# 1. Guest data, a snapshot, a disabled bitmap with data, an unknown
# extension and an unknown autoclear bit (set last: QEMU would clear it).
a="$tmpdir/a.qcow2"
qemu-img create -q -f qcow2 "$a" $size
qemu-img bitmap --add "$a" off
qemu-io -f qcow2 -c 'write -q -P 0xab 0 1M' "$a"
qemu-img snapshot -c snap1 "$a"
qemu-io -f qcow2 -c 'write -q -P 0xcd 2M 64k' "$a"
qemu-img bitmap --disable "$a" off
$edit "$a" add-ext 1a2b3c4d "kept by every writer"
$edit "$a" set autoclear_features $(( $($edit "$a" get autoclear_features) | 1 << 5 ))
qemu_check "$a"
before="$(snapshot_of "$a")"
grep -q '^1a2b3c4d' <<< "$before" || fail "the unknown extension was not added"
[ "$(dirty_map "$a" off)" = "0 1048576
2097152 65536" ] || fail "bitmap 'off' was not set up as expected"

run_filter "$a"
qemu_check "$a"
after="$(snapshot_of "$a")"
if [ "$after" != "$before" ]; then
  diff <(echo "$before") <(echo "$after") >&2
  fail "the run changed what the filter does not own"
fi
[ $(( $($edit "$a" get autoclear_features) )) -eq 1 ] ||
  fail "autoclear is $($edit "$a" get autoclear_features), expected only the bitmaps bit"
assert_map "$a" b0 "1048576 65536
33554432 65536"

# 2. An external data file: its name (a header extension) and the
# incompatible bit stay, and the data file itself is untouched.
b="$tmpdir/b.qcow2"
qemu-img create -q -f qcow2 -o data_file="$tmpdir/b.data",data_file_raw=on "$b" $size
qemu-io -f qcow2 -c 'write -q -P 0x5a 0 64k' "$b"
cp "$tmpdir/b.data" "$tmpdir/b.data.orig"
exts_before="$($edit "$b" exts)"   # no bitmaps extension yet
incompat_before="$($edit "$b" get incompatible_features)"
run_filter "$b"
qemu_check "$b"
[ "$($edit "$b" exts | grep -v '^23852875')" = "$exts_before" ] ||
  fail "the external data file's extensions changed"
[ "$($edit "$b" get incompatible_features)" = "$incompat_before" ] ||
  fail "incompatible features changed"
cmp "$tmpdir/b.data" "$tmpdir/b.data.orig" || fail "the data file changed"
qemu-img info "$b" | grep -q "data file: $tmpdir/b.data" ||
  fail "qemu-img no longer sees the data file"
assert_map "$b" b0 "1048576 65536
33554432 65536"
