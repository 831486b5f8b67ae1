#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# dirtybitmap-store-interval=SECONDS stores the bitmaps in the
# background: after kill -9, a bitmap holds what was written before
# the last periodic store exactly (64K granules) and only what was
# written after it by journal region (1M).  nbdkit runs in the
# foreground (-f, -P), is killed with kill -9, and is restarted and
# stopped by SIGTERM.  With crash safety off the parameter is refused
# (captive, --run): exit status 1, the message, the sidecar untouched.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires truncate

size=$((16 * 1024 * 1024))
M=$((1024 * 1024))
interval=2
disk="$tmpdir/disk.img"
sidecar="$tmpdir/disk.qcow2"
sock="$tmpdir/nbd.sock"
uri="nbd+unix:///?socket=$sock"
truncate -s $size "$disk"
args=(file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b)
stored="dirtybitmap: periodic store of the bitmaps in $sidecar"

before="$(for k in 0 2 4 6; do echo "$((k * M + 65536)) 4096"; done)"
after="$(for k in 1 4 9; do echo "$((k * M + 3 * 65536)) 512"; done)"

start_nbdkit_background "$sock" -v "${args[@]}" \
  dirtybitmap-store-interval=$interval
write_ranges "$before"
for (( i = 0; i < 100; i++ )); do
  grep -qF "$stored" "$sock.err" && break
  sleep 0.05
done
grep -qF "$stored" "$sock.err" ||
  fail "no periodic store within $((interval * 2)) s of the writes"
# The next store is $interval s away: these writes stay in the journal.
write_ranges "$after"
kill -9 "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 137 ] || fail "nbdkit was not killed (status $status)"
[ "$(bitmap_flags "$sidecar" b)" = "in-use,auto 65536" ] ||
  fail "b after kill -9: '$(bitmap_flags "$sidecar" b)'"
qemu_check "$sidecar"

restart_after_crash "$tmpdir/restart.sock" "${args[@]}" ||
  fail "the restart after kill -9 failed"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "b after recovery: '$(bitmap_flags "$sidecar" b)'"
assert_map "$sidecar" b "$({ echo "$before"
                             awk -v M=$M '{ print int($1 / M) * M, M }' \
                               <<< "$after"; } |
                           expected_map 65536 $size)"

sum="$(sha256sum < "$sidecar")"
status=0
nbdkit_filter -U - "${args[@]}" dirtybitmap-crash-safe=false \
  dirtybitmap-store-interval=$interval --run 'touch "$tmpdir/ran"' \
  2> "$tmpdir/err" || status=$?
[ "$status" -eq 1 ] ||
  fail "dirtybitmap-store-interval with crash safety off: exit status $status"
grep -qF "nbdkit: error: dirtybitmap-store-interval=$interval needs crash safety: with dirtybitmap-crash-safe=false a bitmap recording at a crash is not trusted whatever was stored, so a periodic store bounds nothing; leave dirtybitmap-store-interval out, or set dirtybitmap-crash-safe=true" \
  "$tmpdir/err" || fail "unexpected message: $(cat "$tmpdir/err")"
[ ! -e "$tmpdir/ran" ] || fail "the captive command ran despite the refusal"
[ "$(sha256sum < "$sidecar")" = "$sum" ] ||
  fail "the refused start changed $sidecar"
