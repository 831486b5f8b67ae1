#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The over-count of a checkpoint after a crash, measured on one fixed
# scenario (not part of "make bench" or "make check"):
#   nbdkit as a daemon (-P) with the file plugin on a sparse disk,
#   bitmap "since-start" named on the command line, a control socket;
#   write W1_MB MiB, then a QMP transaction adds the persistent bitmap
#   "checkpoint", write W2_MB MiB, kill -9; restart in the foreground,
#   one writable connection (recovery), SIGTERM (the clean stop stores
#   the bitmaps).
# Writes are WRITE_KB KiB at offsets drawn (seeded, SEED) from the whole
# disk, aligned to their size.  Prints the bytes written after the
# checkpoint's creation (at the bitmaps' 64K granularity), the bytes of
# the journal regions (1M) they touch (what recovery must add at
# least), the checkpoint's dirty bytes after the crash
# (qemu-nbd -B + nbdinfo --map), and the ratio of the last to the
# first.
#
#   bash tests/bench/crash-overcount.sh
#   OVERCOUNT_BUILD=DIR   the build tree whose filter is measured
#                         (default: this one), e.g. a worktree of an
#                         older commit
#   W1_MB=400 W2_MB=30 WRITE_KB=64 DISK_GB=4 SEED=1
#   EXTRA="dirtybitmap-store-interval=1" SLEEP_BEFORE_KILL=3
#                         extra filter parameters, and seconds to wait
#                         between the last write and kill -9
abs_top_srcdir="$(cd "$(dirname "$0")/../.." && pwd)"
abs_top_builddir="${OVERCOUNT_BUILD:-$abs_top_srcdir}"
source "$abs_top_srcdir/tests/functions.sh"
requires truncate

: "${W1_MB:=400}" "${W2_MB:=30}" "${WRITE_KB:=64}" "${DISK_GB:=4}"
: "${SEED:=1}" "${EXTRA:=}" "${SLEEP_BEFORE_KILL:=0}"
size=$((DISK_GB * 1024 * 1024 * 1024))
disk="$tmpdir/disk.img"
sidecar="$tmpdir/disk.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
uri="nbd+unix:///?socket=$sock"
truncate -s $size "$disk"
# shellcheck disable=SC2206
args=(file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=since-start
      $EXTRA)

# write_phase PHASE MB: write MB MiB; prints the 64K granules and 1M
# regions the phase touched, one "g N" or "r N" line each.
write_phase ()
{
  PHASE="$1" MB="$2" nbdsh_script "$uri" <<'PY'
import os, random
kb, size = int(os.environ["WRITE_KB"]), int(os.environ["DISK_BYTES"])
rng = random.Random("%s-%s" % (os.environ["SEED"], os.environ["PHASE"]))
length = kb * 1024
buf = b"w" * length
for _ in range(int(os.environ["MB"]) * 1024 // kb):
    offset = rng.randrange(size // length) * length
    h.pwrite(buf, offset)
    for g in range(offset >> 16, (offset + length - 1 >> 16) + 1):
        print("g", g)
    for r in range(offset >> 20, (offset + length - 1 >> 20) + 1):
        print("r", r)
PY
}
export WRITE_KB SEED DISK_BYTES=$size

start_nbdkit_daemon "$sock" "${args[@]}" dirtybitmap-control="$ctl"
wait_control

write_phase before "$W1_MB" > /dev/null
qmp_ok transaction \
  '{"actions":[{"type":"block-dirty-bitmap-add","data":{"name":"checkpoint","persistent":true}}]}'
write_phase after "$W2_MB" > "$tmpdir/after"
sleep "$SLEEP_BEFORE_KILL"
kill9_daemon
restart_after_crash "$tmpdir/restart.sock" "${args[@]}" ||
  fail "the restart after kill -9 failed"
qemu_check "$sidecar"

written=$(( $(grep '^g' "$tmpdir/after" | sort -u | wc -l) * 65536 ))
regions=$(( $(grep '^r' "$tmpdir/after" | sort -u | wc -l) * 1048576 ))
recovered=$(dirty_map "$sidecar" checkpoint | awk '{ n += $2 } END { printf "%.0f", n }')
echo "filter: $FILTER"
echo "written before the checkpoint: $W1_MB MiB, after: $W2_MB MiB," \
     "in ${WRITE_KB}K writes on a $DISK_GB GiB disk (seed $SEED)${EXTRA:+, $EXTRA}"
echo "dirty after the checkpoint's creation (64K granules): $written bytes"
echo "journal regions (1M) those writes touch:              $regions bytes"
echo "checkpoint after kill -9 and recovery:                $recovered bytes"
awk -v a="$recovered" -v w="$written" \
  'BEGIN { printf "over-count ratio (checkpoint / written): %.2f\n", a / w }'
