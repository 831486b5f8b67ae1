#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# While nbdkit serves, a persistent bitmap that does not record is
# consistent in the sidecar once x-dirtybitmap-store (or any change to
# it) has replied: QEMU serves it (qemu-nbd -r -B, sharing the file) with exactly the
# ranges x-dirtybitmap-extents reports, qemu-img info -U shows it not in
# use and the recording one in use, qemu-img check -U finds nothing
# wrong.  Enabling it puts it in use; disabling it makes it readable
# again, with what it recorded meanwhile.  After a clean stop both are
# consistent, with exact maps.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
uri="nbd+unix:///?socket=$sock"
size=$((8 * 1024 * 1024))
export PYTHONPATH="$abs_top_srcdir/tests/helpers"

# The dirty ranges of bitmap $1 as x-dirtybitmap-extents reports them.
qmp_map ()
{
  /usr/bin/python3 - "$ctl" "$1" <<'EOF'
import sys
from qmp import Client, all_extents
c = Client(sys.argv[1])
for offset, length in all_extents(c, sys.argv[2]):
    print(offset, length)
EOF
}

# The dirty ranges of bitmap $1 as QEMU serves them while nbdkit holds
# the sidecar: force-share=on shares it despite nbdkit's lock, as
# qemu-img -U does (qemu-nbd has no such option).
shared_opts="driver=qcow2,force-share=on,file.driver=file,file.filename=$sidecar"
shared_map ()
{
  nbdinfo --map="qemu:dirty-bitmap:$1" -- \
    [ qemu-nbd -r --image-opts -B "$1" "$shared_opts" ] |
  awk '$4 == "dirty" {
         if (have && $1 == off + len) { len += $2; next }
         if (have) printf "%.0f %.0f\n", off, len
         off = $1; len = $2; have = 1
       }
       END { if (have) printf "%.0f %.0f\n", off, len }'
}

# Bitmap $1 must hold exactly $2 ("offset length" lines) for QMP and,
# read while nbdkit serves, for QEMU.
assert_live ()
{
  local name="$1" expected="$2" actual
  actual="$(qmp_map "$name")"
  [ "$actual" = "$expected" ] ||
    fail "x-dirtybitmap-extents of $name:
$actual
expected:
$expected"
  actual="$(shared_map "$name")"
  [ "$actual" = "$expected" ] ||
    fail "qemu-nbd -U -B $name while nbdkit serves:
$actual
expected:
$expected"
}

assert_flags ()
{
  local actual
  actual="$(bitmap_flags "${@:1:$#-1}")"
  [ "$actual" = "${@: -1}" ] ||
    fail "flags of ${@: -2:1}: '$actual', expected '${@: -1}'"
}

check_shared ()
{
  local out
  out="$(qemu-img check -U "$sidecar" 2>&1)" ||
    { echo "$out" >&2; fail "qemu-img check -U while nbdkit serves"; }
}

w1="0 1
65536 100
200000 300000
3145728 65536"
w2="131072 1
4194304 4096"
w3="262144 1
7340032 65536"
w4="393216 10
$((size - 1)) 1"

start_nbdkit_background "$sock" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
wait_control

# A records from the start; D, disabled, gets what A holds after w1.
qmp_ok block-dirty-bitmap-add '{"name":"A","persistent":true}'
write_ranges "$w1" s
qmp_ok block-dirty-bitmap-add '{"name":"D","persistent":true,"disabled":true}' \
       block-dirty-bitmap-merge '{"target":"D","bitmaps":["A"]}'
d_expected="$(expected_map 65536 $size <<< "$w1")"
# Committed with the reply: readable before any store.
assert_live D "$d_expected"
assert_flags -U "$sidecar" A "in-use,auto 65536"
assert_flags -U "$sidecar" D " 65536"

# More writes (A only), then a store.
write_ranges "$w2" s
qmp_ok x-dirtybitmap-store
assert_live D "$d_expected"
[ "$(qmp_map A)" = "$(printf '%s\n%s\n' "$w1" "$w2" |
                      expected_map 65536 $size)" ] ||
  fail "x-dirtybitmap-extents of A: $(qmp_map A)"
assert_flags -U "$sidecar" A "in-use,auto 65536"
assert_flags -U "$sidecar" D " 65536"
check_shared
# qemu-nbd refuses A, which is in use.
if nbdinfo --map="qemu:dirty-bitmap:A" -- \
     [ qemu-nbd -r --image-opts -B A "$shared_opts" ] > "$tmpdir/a.map" 2>&1; then
  fail "qemu-nbd served A, which records: $(cat "$tmpdir/a.map")"
fi
grep -q "Bitmap 'A' is inconsistent" "$tmpdir/a.map" ||
  fail "qemu-nbd refused A for another reason: $(cat "$tmpdir/a.map")"

# Enabled, D is in use in the sidecar; disabled again, it is readable
# with what it recorded in between.
qmp_ok block-dirty-bitmap-enable '{"name":"D"}'
assert_flags -U "$sidecar" D "in-use,auto 65536"
write_ranges "$w3" s
qmp_ok block-dirty-bitmap-disable '{"name":"D"}'
assert_flags -U "$sidecar" D " 65536"
d_expected="$(printf '%s\n%s\n' "$w1" "$w3" | expected_map 65536 $size)"
assert_live D "$d_expected"
check_shared

# Writes after the last store: in A only.
write_ranges "$w4" s
assert_live D "$d_expected"
a_expected="$(printf '%s\n%s\n%s\n%s\n' "$w1" "$w2" "$w3" "$w4" |
              expected_map 65536 $size)"
[ "$(qmp_map A)" = "$a_expected" ] ||
  fail "x-dirtybitmap-extents of A: $(qmp_map A)"

kill -TERM "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" A)" = "auto 65536" ] ||
  fail "flags of A after the stop: $(bitmap_flags "$sidecar" A)"
[ "$(bitmap_flags "$sidecar" D)" = " 65536" ] ||
  fail "flags of D after the stop: $(bitmap_flags "$sidecar" D)"
assert_map "$sidecar" A "$a_expected"
assert_map "$sidecar" D "$d_expected"
