#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# After kill -9, the next start rebuilds every bitmap that was
# recording: what it held when tracking began, exactly, plus every
# region written since, at the journal's granularity (1M by default,
# 64K here in a second round, where the result is exact).  While
# killed the sidecar is valid for QEMU (no errors, no leaks) and the
# bitmaps are in use; after the clean restart they are consistent and
# the journal is gone.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((64 * 1024 * 1024))
M=$((1024 * 1024))
uri () { echo "nbd+unix:///?socket=$1"; }

for crash_granularity in default 64K; do
  sidecar="$tmpdir/sidecar-$crash_granularity.qcow2"
  sock="$tmpdir/sock-$crash_granularity"
  extra=()
  [ $crash_granularity = default ] ||
    extra=(dirtybitmap-crash-granularity=$crash_granularity)
  qemu-img create -q -f qcow2 "$sidecar" $size
  qemu-img bitmap --add -g 4096 "$sidecar" fine

  # Session 1, stopped cleanly: its write is stored exactly.
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=b0 "${extra[@]}" \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"a\" * 512, 100000)"'

  # Session 2, killed after a write, a zero and a trim.
  start_nbdkit_background "$sock" memory $size dirtybitmap-file="$sidecar" \
    dirtybitmap=b0 "${extra[@]}"
  /usr/bin/python3 -m nbd -u "$(uri "$sock")" -c "
h.pwrite(b'b' * 10, 5 * $M + 3)
h.zero(70000, 20 * $M)
h.trim(1, 40 * $M - 1)
"
  kill -9 "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 137 ] || fail "nbdkit was not killed (status $status)"
  for b in b0 fine; do
    [ "$(bitmap_flags "$sidecar" $b)" = "in-use,auto $(
         [ $b = b0 ] && echo 65536 || echo 4096)" ] ||
      fail "$b after kill -9: '$(bitmap_flags "$sidecar" $b)'"
  done
  journal_granularity=$([ $crash_granularity = default ] && echo 1048576 ||
                        echo 65536)
  [ "$(bitmap_flags "$sidecar" nbdkit-dirtybitmap-journal)" = \
    "in-use $journal_granularity" ] ||
    fail "journal: '$(bitmap_flags "$sidecar" nbdkit-dirtybitmap-journal)'"
  qemu_check "$sidecar"

  # Restart: one writable connection, no write, clean stop.
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" \
    "${extra[@]}" \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.flush()"'
  qemu_check "$sidecar"
  [ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
    fail "b0 after recovery: '$(bitmap_flags "$sidecar" b0)'"
  [ "$(bitmap_flags "$sidecar" fine)" = "auto 4096" ] ||
    fail "fine after recovery: '$(bitmap_flags "$sidecar" fine)'"
  [ "$(bitmap_flags "$sidecar" nbdkit-dirtybitmap-journal)" = absent ] ||
    fail "the journal is still there after a clean stop"

  # Session 1's write, exact, and session 2's, by journal region.
  g=$journal_granularity
  assert_map "$sidecar" b0 "$(
    { echo "100000 512"
      echo "$(( 5 * M / g * g )) $g"
      echo "$(( 20 * M / g * g )) $(( (20 * M + 70000 + g - 1) / g * g - 20 * M / g * g ))"
      echo "$(( (40 * M - 1) / g * g )) $g"
    } | expected_map 65536 $size)"
  assert_map "$sidecar" fine "$(
    { echo "100000 512"
      echo "$(( 5 * M / g * g )) $g"
      echo "$(( 20 * M / g * g )) $(( (20 * M + 70000 + g - 1) / g * g - 20 * M / g * g ))"
      echo "$(( (40 * M - 1) / g * g )) $g"
    } | expected_map 4096 $size)"
done
