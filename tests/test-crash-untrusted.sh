#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The journal is trusted only while nothing else has written the
# sidecar since the filter did.  After a crash: (1) if QEMU opened the
# sidecar for writing (which clears the filter's autoclear bit), or
# (2) if the crash-safety record fails its crc32, the bitmaps that
# were recording are not rebuilt: they stay in use (the default policy
# keep), the warning says why, and the stale journal is removed with
# no cluster leaked.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((16 * 1024 * 1024))
edit=("/usr/bin/python3" "$abs_top_srcdir/tests/helpers/header-edit.py")

crash ()
{
  local sidecar="$1" sock="$2"
  start_nbdkit_background "$sock" memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=b0
  /usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$sock" \
    -c 'h.pwrite(b"x" * 512, 65536)'
  kill -9 "$nbdkit_pid"
  wait_nbdkit_exit
  [[ "$("${edit[@]}" "$sidecar" exts)" == *6e62646a* ]] ||
    fail "no crash-safety record after the crash"
}

restart_expecting ()
{
  local sidecar="$1" reason="$2" err="$tmpdir/restart.err"
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=b1 \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"y\", 0)"' \
    2> "$err" || { cat "$err" >&2; fail "restart failed"; }
  grep -qF "bitmap 'b0' is marked in use and cannot be recovered ($reason)" \
    "$err" || { cat "$err" >&2; fail "no warning saying '$reason'"; }
  [ "$(bitmap_flags "$sidecar" b0)" = "in-use,auto 65536" ] ||
    fail "b0 is '$(bitmap_flags "$sidecar" b0)'"
  [ "$(bitmap_flags "$sidecar" nbdkit-dirtybitmap-journal)" = absent ] ||
    fail "the stale journal was kept"
  [[ "$("${edit[@]}" "$sidecar" exts)" != *6e62646a* ]] ||
    fail "the stale crash-safety record was kept"
  [ "$(bitmap_flags "$sidecar" b1)" = "auto 65536" ] ||
    fail "b1 is '$(bitmap_flags "$sidecar" b1)'"
  assert_map "$sidecar" b1 "0 65536"
  qemu_check "$sidecar"
}

# 1. QEMU wrote the sidecar after the crash.
s1="$tmpdir/qemu-wrote.qcow2"
crash "$s1" "$tmpdir/sock1"
qemu-img bitmap --add "$s1" other
[ "$("${edit[@]}" "$s1" get autoclear_features)" = 1 ] ||
  fail "QEMU did not clear the filter's autoclear bit"
restart_expecting "$s1" "another program opened the sidecar for writing after the filter (it cleared the filter's autoclear bit)"
[ "$(bitmap_flags "$s1" other)" = "auto 65536" ] ||
  fail "QEMU's bitmap is '$(bitmap_flags "$s1" other)'"

# 2. The record is torn: one byte of it changed.
s2="$tmpdir/torn.qcow2"
crash "$s2" "$tmpdir/sock2"
"${edit[@]}" "$s2" flip-ext 6e62646a 9
restart_expecting "$s2" "the crash-safety record fails its crc32 (torn write)"
