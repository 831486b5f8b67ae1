#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A sidecar made and edited by qemu-img works with the filter in both
# directions: bitmaps added by qemu-img (any granularity) record writes
# when none is named, a disabled one is left exactly as it was, a
# cleared one holds only later writes, and the bitmaps the filter
# stored can be merged (within the file and from another file) and
# removed by qemu-img.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((16 * 1024 * 1024))
M=$((1024 * 1024))

# Run the filter over a memory disk, no bitmap named, with the Python
# requests given as $1 (nbdsh, "h" is the handle).
run_filter ()
{
  printf '%s\n' "$1" > "$tmpdir/requests.py"
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c \"\$(cat '$tmpdir/requests.py')\""
}

# The sidecar as qemu-img makes it.
qemu-img create -q -f qcow2 "$sidecar" $size
qemu-img bitmap --add "$sidecar" a                 # 64K, recording
qemu-img bitmap --add -g 4K "$sidecar" small       # 4K, recording
qemu-img bitmap --add "$sidecar" clr               # recording, cleared later
qemu-img bitmap --add "$sidecar" dis               # disabled below
qemu-img bitmap --disable "$sidecar" dis
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" dis)" = " 65536" ] ||
  fail "qemu-img did not make 'dis' disabled: '$(bitmap_flags "$sidecar" dis)'"

# Run 1: every recording bitmap records, the disabled one does not.
w1="0 1
70000 4096
$((M + 100)) 200000
$((size - 5000)) 5000"
run_filter "
h.pwrite(b'a', 0)
h.pwrite(b'b' * 4096, 70000)
h.zero(200000, $((M + 100)))
h.trim(5000, $((size - 5000)))
h.flush()
"
qemu_check "$sidecar"
for b in a clr; do
  [ "$(bitmap_flags "$sidecar" $b)" = "auto 65536" ] ||
    fail "run 1: flags of '$b' are '$(bitmap_flags "$sidecar" $b)'"
done
[ "$(bitmap_flags "$sidecar" small)" = "auto 4096" ] ||
  fail "run 1: flags of 'small' are '$(bitmap_flags "$sidecar" small)'"
[ "$(bitmap_flags "$sidecar" dis)" = " 65536" ] ||
  fail "run 1: flags of 'dis' are '$(bitmap_flags "$sidecar" dis)'"
w1_64k="0 131072
1048576 262144
16711680 65536"
w1_4k="0 4096
69632 8192
1048576 200704
16769024 8192"
[ "$(expected_map 65536 $size <<< "$w1")" = "$w1_64k" ] ||
  fail "expected_map disagrees with the hand-computed 64K map"
[ "$(expected_map 4096 $size <<< "$w1")" = "$w1_4k" ] ||
  fail "expected_map disagrees with the hand-computed 4K map"
assert_map "$sidecar" a "$w1_64k"
assert_map "$sidecar" clr "$w1_64k"
assert_map "$sidecar" small "$w1_4k"
assert_map "$sidecar" dis ""

# Between the runs, with qemu-img: fill the disabled bitmap by merging
# a filter-stored one into it, add 'tgt' filled from 'small' (4K into
# 64K), clear 'clr'.
qemu-img bitmap --merge a "$sidecar" dis
qemu_check "$sidecar"
qemu-img bitmap --add "$sidecar" tgt
qemu-img bitmap --merge small "$sidecar" tgt
qemu_check "$sidecar"
qemu-img bitmap --clear "$sidecar" clr
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" dis)" = " 65536" ] ||
  fail "merging into 'dis' changed its flags: '$(bitmap_flags "$sidecar" dis)'"
assert_map "$sidecar" dis "$w1_64k"
assert_map "$sidecar" tgt "$w1_64k"
assert_map "$sidecar" clr ""
dis_before="$(dirty_map "$sidecar" dis)"

# Run 2: new writes go to a, small, clr, tgt; 'dis' keeps run 1's data.
w2="$((5 * M)) 10
$((8 * M)) 65536
$((M + 300000)) 1"
run_filter "
h.pwrite(b'c' * 10, $((5 * M)))
h.zero(65536, $((8 * M)))
h.pwrite(b'd', $((M + 300000)))
h.flush()
"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" dis)" = " 65536" ] ||
  fail "run 2: flags of 'dis' are '$(bitmap_flags "$sidecar" dis)'"
[ "$(dirty_map "$sidecar" dis)" = "$dis_before" ] ||
  fail "run 2 changed the disabled bitmap 'dis'"
assert_map "$sidecar" dis "$w1_64k"
w2_64k="1310720 65536
5242880 65536
8388608 65536"
[ "$(expected_map 65536 $size <<< "$w2")" = "$w2_64k" ] ||
  fail "expected_map disagrees with the hand-computed run 2 map"
assert_map "$sidecar" clr "$w2_64k"
both_64k="$(printf '%s\n%s\n' "$w1" "$w2" | expected_map 65536 $size)"
[ "$both_64k" = "0 131072
1048576 327680
5242880 65536
8388608 65536
16711680 65536" ] || fail "unexpected union map: $both_64k"
assert_map "$sidecar" a "$both_64k"
assert_map "$sidecar" tgt "$both_64k"
assert_map "$sidecar" small "$(printf '%s\n%s\n' "$w1" "$w2" |
                               expected_map 4096 $size)"
for b in a clr tgt; do
  [ "$(bitmap_flags "$sidecar" $b)" = "auto 65536" ] ||
    fail "run 2: flags of '$b' are '$(bitmap_flags "$sidecar" $b)'"
done
[ "$(bitmap_flags "$sidecar" small)" = "auto 4096" ] ||
  fail "run 2: flags of 'small' are '$(bitmap_flags "$sidecar" small)'"

# qemu-img on the bitmaps the filter stored.
# Merge within the file: clr (run 2 only) <- dis (run 1 only).
qemu-img bitmap --merge dis "$sidecar" clr
qemu_check "$sidecar"
assert_map "$sidecar" clr "$both_64k"
[ "$(bitmap_flags "$sidecar" clr)" = "auto 65536" ] ||
  fail "after merge: flags of 'clr' are '$(bitmap_flags "$sidecar" clr)'"

# Merge from another file: a filter-stored 4K bitmap into a new file.
other="$tmpdir/other.qcow2"
qemu-img create -q -f qcow2 "$other" $size
qemu-img bitmap --add -g 8K "$other" ext
qemu-img bitmap --merge small -b "$sidecar" -F qcow2 "$other" ext
qemu_check "$other"
qemu_check "$sidecar"
assert_map "$other" ext "$(printf '%s\n%s\n' "$w1" "$w2" |
                           expected_map 8192 $size)"

# Remove a filter-stored bitmap; the others are untouched.
qemu-img bitmap --remove "$sidecar" small
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" small)" = "absent" ] ||
  fail "'small' still present after --remove"
assert_map "$sidecar" a "$both_64k"
assert_map "$sidecar" tgt "$both_64k"
assert_map "$sidecar" dis "$w1_64k"

# Run 3: the filter accepts the sidecar as qemu-img left it.
run_filter "h.pwrite(b'e', $((12 * M)))"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" small)" = "absent" ] ||
  fail "run 3 brought back the removed bitmap 'small'"
all_64k="$(printf '%s\n%s\n%s 1\n' "$w1" "$w2" $((12 * M)) |
           expected_map 65536 $size)"
assert_map "$sidecar" a "$all_64k"
assert_map "$sidecar" clr "$all_64k"
assert_map "$sidecar" dis "$w1_64k"
[ "$(bitmap_flags "$sidecar" dis)" = " 65536" ] ||
  fail "run 3: flags of 'dis' are '$(bitmap_flags "$sidecar" dis)'"
