#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The man page's short examples work as printed: each command block is
# taken from the POD and run as it stands (only --filter=dirtybitmap is
# pointed at the build tree), and what it promises is checked.  The
# step-by-step backup has a test of its own
# (test-man-example-backup.sh).  Two examples serve on nbdkit's default
# TCP port, as printed; make check runs the tests one at a time.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires ss truncate

pod="$abs_top_srcdir/man/nbdkit-dirtybitmap-filter.pod"

# The verbatim block (indented lines) that follows the line of the POD
# matching ANCHOR (a fixed string), unindented.
pod_block ()
{
  /usr/bin/python3 - "$pod" "$1" <<'PYEOF'
import sys
lines = open(sys.argv[1]).read().split("\n")
anchor = sys.argv[2]
starts = [i for i, l in enumerate(lines) if anchor in l]
if len(starts) != 1:
    sys.exit("anchor %r found %d times in the man page" % (anchor, len(starts)))
i = starts[0] + 1
while i < len(lines) and not lines[i].startswith(" "):
    i += 1
block = []
while i < len(lines) and (lines[i].startswith(" ") or lines[i] == ""):
    block.append(lines[i][1:])
    i += 1
print("\n".join(block).strip("\n"))
PYEOF
}

# Run a command block as printed, from the test's directory.
run_block ()
{
  sed "s|--filter=dirtybitmap |--filter=$FILTER |" > "$tmpdir/block.sh"
  (cd "$tmpdir" && bash -e block.sh)
}

# The pid of the server listening on nbdkit's default port.
port_pid ()
{
  ss -Hltnp 'sport = :10809' | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}
stop_port_server ()
{
  local sig="$1" pid
  pid="$(port_pid)"
  [ -n "$pid" ] || fail "no server listens on port 10809"
  kill "-$sig" "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
cleanup_fn 'p="$(port_pid)"; [ -n "$p" ] && kill -9 "$p"'
[ -z "$(port_pid)" ] || fail "port 10809 is in use: these examples need it"

# Write 64 KiB of ones at OFFSET through the server on port 10809.
write_at ()
{
  nbdsh_script nbd://localhost <<EOF
h.pwrite(b"\\1" * 65536, $1)
h.flush()
EOF
}

# Survive a crash: the commands before the comment start the first
# server; the client's write is acknowledged, the "power" goes (kill
# -9), and the commands after it start the second server, which is
# stopped cleanly with nobody connected.
pod_block "=head2 Survive a crash" > "$tmpdir/crash.txt"
grep -q '^#' "$tmpdir/crash.txt" || fail "the crash example has no comment line"
truncate -s 64M "$tmpdir/disk.img"
sed '/^#/,$d' "$tmpdir/crash.txt" | run_block
write_at 1048576
stop_port_server KILL
sed '1,/^#/d' "$tmpdir/crash.txt" | run_block
stop_port_server TERM
qemu_check "$tmpdir/disk.bitmaps.qcow2"
flags="$(bitmap_flags "$tmpdir/disk.bitmaps.qcow2" since-monday)"
[ "$flags" = "auto 65536" ] ||
  fail "after the crash example since-monday is '$flags', not stored consistent"
# The journal's unit is 1 MiB: recovery may only add whole regions.
assert_map "$tmpdir/disk.bitmaps.qcow2" since-monday "1048576 1048576"
rm -f "$tmpdir/disk.img" "$tmpdir/disk.bitmaps.qcow2"

# Record writes to a disk image: one write, then a clean stop.
truncate -s 64M "$tmpdir/disk.img"
pod_block "=head2 Record writes to a disk image" | run_block
write_at 196608
stop_port_server TERM
qemu_check "$tmpdir/disk.bitmaps.qcow2"
assert_map "$tmpdir/disk.bitmaps.qcow2" backup1 "196608 65536"
rm -f "$tmpdir/disk.img" "$tmpdir/disk.bitmaps.qcow2"

# dirtybitmap-data= in front of qemu-nbd: the example starts qemu-nbd
# in the background on /tmp/disk.sock, which the test then stops.
cleanup_fn 'pkill -f "^qemu-nbd -f raw -k /tmp/disk.sock" ; rm -f /tmp/disk.sock'
# A socket file nobody serves (nbdkit leaves its -U file behind, as
# test-man-example-backup's example does) is removed; a live one means
# someone else uses the path.
if [ -e /tmp/disk.sock ]; then
  ! ss -Hxl | grep -q ' /tmp/disk.sock ' ||
    fail "/tmp/disk.sock is served by someone else: the example needs it"
  rm -f /tmp/disk.sock
fi
# (Output goes to a file: qemu-nbd keeps the block's stdout open.)
pod_block "for example the nbd plugin" | run_block > "$tmpdir/out.txt"
out="$(cat "$tmpdir/out.txt")"
echo "$out" | grep -q '^	export-size: 1073741824' ||
  fail "the nbd example printed no 1 GiB export: $out"
pkill -f "^qemu-nbd -f raw -k /tmp/disk.sock"
rm -f "$tmpdir/disk.img" "$tmpdir/disk.bitmaps.qcow2"

# dirtybitmap-data-id= with the memory plugin.
out="$(pod_block "increments)." | run_block)"
echo "$out" | grep -q '^	export-size: 1073741824' ||
  fail "the memory example printed no 1 GiB export: $out"
rm -f "$tmpdir/mem.bitmaps.qcow2"
