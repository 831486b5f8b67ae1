#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# After kill -9, a checkpoint created while nbdkit ran comes back with
# only the regions written after its creation: the live commit that
# created it stored every recording bitmap and truncated the journal,
# so recovery adds to each bitmap only what was written since.  nbdkit
# runs as a daemon (-P), is killed with kill -9, and is restarted in
# the foreground, stopped by SIGTERM.  The bitmap recording since the
# start keeps its writes from before the checkpoint exactly (64K) and
# gets those after by journal region (1M); every acknowledged write is
# covered; the sidecar is clean for QEMU at each step.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires truncate

size=$((64 * 1024 * 1024))
M=$((1024 * 1024))
disk="$tmpdir/disk.img"
sidecar="$tmpdir/disk.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
uri="nbd+unix:///?socket=$sock"
truncate -s $size "$disk"
args=(file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=since-start)

# Before the checkpoint: 4K at the start of every even MiB.  After it:
# 4K inside every fourth odd MiB, and once more into MiB 0.
before="$(for k in $(seq 0 2 30); do echo "$((k * M)) 4096"; done)"
after="$(for k in $(seq 1 4 29); do echo "$((k * M + 8192)) 4096"; done
         echo "$((3 * 65536)) 4096")"
regions_of () { awk -v M=$M '{ print int($1 / M) * M, M }'; }

start_nbdkit_daemon "$sock" "${args[@]}" dirtybitmap-control="$ctl"
wait_control

write_ranges "$before"
qmp_ok transaction \
  '{"actions":[{"type":"block-dirty-bitmap-add","data":{"name":"checkpoint","persistent":true}}]}'
write_ranges "$after"
kill9_daemon
for b in since-start checkpoint; do
  [ "$(bitmap_flags "$sidecar" $b)" = "in-use,auto 65536" ] ||
    fail "$b after kill -9: '$(bitmap_flags "$sidecar" $b)'"
done
qemu_check "$sidecar"

restart_after_crash "$tmpdir/restart.sock" "${args[@]}" ||
  fail "the restart after kill -9 failed"
qemu_check "$sidecar"
for b in since-start checkpoint; do
  [ "$(bitmap_flags "$sidecar" $b)" = "auto 65536" ] ||
    fail "$b after recovery: '$(bitmap_flags "$sidecar" $b)'"
done
assert_map "$sidecar" checkpoint "$(regions_of <<< "$after" |
                                    expected_map 65536 $size)"
assert_map "$sidecar" since-start "$({ echo "$before"
                                       regions_of <<< "$after"; } |
                                     expected_map 65536 $size)"
