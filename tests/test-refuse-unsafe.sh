#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Sidecars the filter must not write are refused with the remedy and
# left byte-identical: an encrypted one at start-up; one whose dirty
# bit says lazy refcounts were not written back when the first writer
# connects (nbdkit then stops with status 1), though nbdkit -r may
# still serve beside it.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp
edit="/usr/bin/python3 $abs_top_srcdir/tests/helpers/header-edit.py"

# Encrypted (LUKS, crypt_method 2): refused at start-up.  The field is
# set by hand: creating a real LUKS image times its key derivation,
# which fails on a loaded machine.
enc="$tmpdir/enc.qcow2"
qemu-img create -q -f qcow2 "$enc" 64M
$edit "$enc" set crypt_method 2
cp "$enc" "$tmpdir/enc.orig"
status=0
timeout 20 nbdkit -f -U "$tmpdir/s1" --filter="$FILTER" memory 64M \
  dirtybitmap-file="$enc" dirtybitmap=b0 2> "$tmpdir/err1" || status=$?
[ $status -eq 1 ] || fail "encrypted sidecar: exit status $status"
grep -qF "$enc: qcow2 header: crypt_method 2: encrypted sidecars are not supported" \
  "$tmpdir/err1" || fail "unexpected error: $(cat "$tmpdir/err1")"
cmp "$enc" "$tmpdir/enc.orig" || fail "the encrypted sidecar changed"

# Dirty bit: lazy refcounts left unflushed by a crashed QEMU.
dirty="$tmpdir/dirty.qcow2"
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$dirty" 64M
qemu-img bitmap --add "$dirty" b0
$edit "$dirty" set incompatible_features 1
cp "$dirty" "$tmpdir/dirty.orig"

# Read-only serving does not write, so it is allowed.
nbdkit_filter -r -U - memory 64M dirtybitmap-file="$dirty" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pread(512, 0)"' ||
  fail "nbdkit -r refused a sidecar it does not write"

# The first writer is refused and nbdkit stops with status 1.
start_nbdkit_background "$tmpdir/s2" memory 64M dirtybitmap-file="$dirty"
/usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$tmpdir/s2" \
  -c 'h.pwrite(b"x" * 512, 0)' 2>/dev/null &&
  fail "a write was served on a sidecar with the dirty bit"
wait_nbdkit_exit
[ $status -eq 1 ] || fail "dirty sidecar: nbdkit exited $status"
grep -qF "$dirty: qcow2 header: the dirty bit is set (lazy refcounts were not written back); repair the sidecar with 'qemu-img check -r all $dirty'" \
  "$tmpdir/s2.err" || fail "unexpected error: $(cat "$tmpdir/s2.err")"
cmp "$dirty" "$tmpdir/dirty.orig" || fail "the dirty sidecar changed"

# The remedy works.
qemu-img check -q -r all "$dirty"
nbdkit_filter -U - memory 64M dirtybitmap-file="$dirty" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"x\" * 512, 0)"'
qemu_check "$dirty"
assert_map "$dirty" b0 "0 65536"
