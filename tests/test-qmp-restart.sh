#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Bitmaps added over QMP survive a clean restart when persistent:
# recording ones with their data, and still recording; disabled ones with
# their data, and still not recording; any granularity.  Non-persistent
# bitmaps are gone, and removed persistent ones stay removed.  The
# sidecar is clean for qemu-img check after each stop.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
uri="nbd+unix:///?socket=$sock"
size=$((8 * 1024 * 1024))
export PYTHONPATH="$abs_top_srcdir/tests/helpers"

start ()
{
  rm -f "$sock"                 # nbdkit leaves it behind
  start_nbdkit_background "$sock" memory $size \
    dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
  wait_control
}

stop ()
{
  kill -TERM "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
  [ ! -e "$ctl" ] || fail "$ctl is left behind"
  qemu_check "$sidecar"
}

# query-dirty-bitmaps, one line per bitmap sorted by name: name,
# granularity, recording, persistent, inconsistent, busy, count.
qmp_query ()
{
  /usr/bin/python3 - "$ctl" <<'EOF'
import sys
from qmp import Client
c = Client(sys.argv[1])
for b in sorted(c.ok("query-dirty-bitmaps"), key=lambda b: b["name"]):
    assert len(b) == 7, b
    print(b["name"], b["granularity"], b["recording"], b["persistent"],
          b["inconsistent"], b["busy"], b["count"])
EOF
}

assert_query ()
{
  local actual
  actual="$(qmp_query)"
  [ "$actual" = "$1" ] || fail "query-dirty-bitmaps:
$actual
expected:
$1"
}

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

assert_qmp_map ()
{
  local actual
  actual="$(qmp_map "$1")"
  [ "$actual" = "$2" ] || fail "x-dirtybitmap-extents of $1:
$actual
expected:
$2"
}

assert_flags ()
{
  [ "$(bitmap_flags "$sidecar" "$1")" = "$2" ] ||
    fail "flags of $1: '$(bitmap_flags "$sidecar" "$1")', expected '$2'"
}

# Bytes covered by "offset length" lines.
bytes () { awk '{ n += $2 } END { printf "%.0f\n", n }'; }

w1="0 1
100000 200000
4194304 4096"
w2="1048576 1
$((size - 4096)) 4096"
w3="2097152 70000
5242880 1"
w4="3145728 1"

# Run 1.  E records throughout; D records w1 only; F, at 4K, throughout;
# R1 and R2 are removed, in runs 1 and 2; V is not persistent.
start
qmp_ok block-dirty-bitmap-add '{"name":"E","persistent":true}' \
       block-dirty-bitmap-add '{"name":"D","persistent":true}' \
       block-dirty-bitmap-add '{"name":"F","persistent":true,"granularity":4096}' \
       block-dirty-bitmap-add '{"name":"R1","persistent":true}' \
       block-dirty-bitmap-add '{"name":"R2","persistent":true}' \
       block-dirty-bitmap-add '{"name":"V"}'
write_ranges "$w1" r
qmp_ok block-dirty-bitmap-disable '{"name":"D"}'
write_ranges "$w2" r
qmp_ok block-dirty-bitmap-remove '{"name":"R1"}'
e_map="$(printf '%s\n%s\n' "$w1" "$w2" | expected_map 65536 $size)"
d_map="$(expected_map 65536 $size <<< "$w1")"
f_map="$(printf '%s\n%s\n' "$w1" "$w2" | expected_map 4096 $size)"
assert_query "D 65536 False True False False $(bytes <<< "$d_map")
E 65536 True True False False $(bytes <<< "$e_map")
F 4096 True True False False $(bytes <<< "$f_map")
R2 65536 True True False False $(bytes <<< "$e_map")
V 65536 True False False False $(bytes <<< "$e_map")"
stop
assert_flags E "auto 65536"
assert_flags D " 65536"
assert_flags F "auto 4096"
assert_flags R2 "auto 65536"
assert_flags R1 absent
assert_flags V absent
assert_map "$sidecar" E "$e_map"
assert_map "$sidecar" D "$d_map"
assert_map "$sidecar" F "$f_map"
assert_map "$sidecar" R2 "$e_map"

# Run 2, with no dirtybitmap= at all: the same bitmaps, V gone.
start
assert_query "D 65536 False True False False $(bytes <<< "$d_map")
E 65536 True True False False $(bytes <<< "$e_map")
F 4096 True True False False $(bytes <<< "$f_map")
R2 65536 True True False False $(bytes <<< "$e_map")"
assert_qmp_map E "$e_map"
assert_qmp_map D "$d_map"
assert_qmp_map F "$f_map"
# E and F keep recording, D does not; R2 goes; P is added.
write_ranges "$w3" r
qmp_ok block-dirty-bitmap-remove '{"name":"R2"}' \
       block-dirty-bitmap-add '{"name":"P","persistent":true,"disabled":true}' \
       block-dirty-bitmap-add '{"name":"V2"}'
write_ranges "$w4" r
qmp_ok block-dirty-bitmap-merge '{"target":"P","bitmaps":["D"]}'
e_map="$(printf '%s\n%s\n%s\n%s\n' "$w1" "$w2" "$w3" "$w4" |
         expected_map 65536 $size)"
f_map="$(printf '%s\n%s\n%s\n%s\n' "$w1" "$w2" "$w3" "$w4" |
         expected_map 4096 $size)"
v2_map="$(expected_map 65536 $size <<< "$w4")"
assert_query "D 65536 False True False False $(bytes <<< "$d_map")
E 65536 True True False False $(bytes <<< "$e_map")
F 4096 True True False False $(bytes <<< "$f_map")
P 65536 False True False False $(bytes <<< "$d_map")
V2 65536 True False False False $(bytes <<< "$v2_map")"
stop
assert_flags E "auto 65536"
assert_flags D " 65536"
assert_flags F "auto 4096"
assert_flags P " 65536"
assert_flags R1 absent
assert_flags R2 absent
assert_flags V2 absent
assert_map "$sidecar" E "$e_map"
assert_map "$sidecar" D "$d_map"
assert_map "$sidecar" F "$f_map"
assert_map "$sidecar" P "$d_map"

# Run 3: nothing written, nothing changes; the removed stay removed.
start
assert_query "D 65536 False True False False $(bytes <<< "$d_map")
E 65536 True True False False $(bytes <<< "$e_map")
F 4096 True True False False $(bytes <<< "$f_map")
P 65536 False True False False $(bytes <<< "$d_map")"
stop
assert_flags R1 absent
assert_flags R2 absent
assert_map "$sidecar" E "$e_map"
assert_map "$sidecar" D "$d_map"
assert_map "$sidecar" F "$f_map"
assert_map "$sidecar" P "$d_map"
