#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The man page's qemu-nbd recipe ("Standard clients"), run as printed
# (only SIDECAR, SOCKET and /tmp are replaced): qemu-nbd serves a view
# and its frozen checkpoint together.  nbdinfo --map of
# qemu:dirty-bitmap:cp1 is the checkpoint's extents range by range, and
# one libnbd handle with both metadata contexts reads, in every dirty
# extent block_status reports, the view's data: the disk before the
# writes that followed the transaction.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sock="$tmpdir/sock"
ctl="$tmpdir/ctl"
sidecar="$tmpdir/sidecar.qcow2"
start_with_control 16M dirtybitmap=cp1
uri="nbd+unix:///?socket=$sock"
write_ranges "0 4096
1048576 100000
5000000 70000
16711680 65536" a

qmp_ok transaction '{"actions": [
  {"type": "block-dirty-bitmap-add", "data": {"name": "cp2", "persistent": true}},
  {"type": "block-dirty-bitmap-disable", "data": {"name": "cp1"}},
  {"type": "x-dirtybitmap-view-add", "data": {"name": "backup", "bitmap": "cp1"}}]}' \
  x-dirtybitmap-store '{}'
# After the instant: the view must not show these.
write_ranges "0 16777216" b

# The recipe's lines, as printed.
pod="$abs_top_srcdir/man/nbdkit-dirtybitmap-filter.pod"
sed -n '/^=head2 Standard clients/,/^=head/p' "$pod" |
  grep -E '^ (opts=|qemu-nbd |nbdinfo )' | sed 's/^ //' > "$tmpdir/recipe"
[ "$(grep -c . "$tmpdir/recipe")" -eq 6 ] ||
  fail "the recipe was not found in the POD: $(cat "$tmpdir/recipe")"
sed -i -e "s|/tmp/backup.sock|$tmpdir/backup.sock|; s|SIDECAR|$sidecar|; s|SOCKET|$sock|" \
  "$tmpdir/recipe"
grep -v '^nbdinfo' "$tmpdir/recipe" > "$tmpdir/serve.sh"
grep '^nbdinfo' "$tmpdir/recipe" > "$tmpdir/map.sh"
grep -q ' &$' "$tmpdir/serve.sh" || fail "qemu-nbd is not started in the background"
(cd "$tmpdir" && exec bash serve.sh) 2> "$tmpdir/qemu-nbd.err"
pid="$(pgrep -n -f "qemu-nbd -r -t -B cp1 -k $tmpdir/backup.sock" || :)"
[ -n "$pid" ] || fail "qemu-nbd did not start: $(cat "$tmpdir/qemu-nbd.err")"
cleanup_fn "kill $pid"
for (( i = 0; i < 100; i++ )); do
  [ -S "$tmpdir/backup.sock" ] && break
  sleep 0.1
done
[ -S "$tmpdir/backup.sock" ] || fail "no qemu-nbd socket"

# nbdinfo --map, range by range, against the checkpoint's extents.
bash "$tmpdir/map.sh" > "$tmpdir/map" ||
  fail "nbdinfo --map failed: $(cat "$tmpdir/map")"
HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
/usr/bin/python3 - "$ctl" "$sock" "$tmpdir/backup.sock" "$tmpdir/map" <<'EOF'
import os, sys
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp

ctl, sock, qsock, mapfile = sys.argv[1:]
c = qmp.Client(ctl)
extents = qmp.all_extents(c, "cp1")
expected = qmp.expected_extents([(0, 4096), (1048576, 100000),
                                 (5000000, 70000), (16711680, 65536)],
                                65536, 16 << 20)
assert extents == expected, (extents, expected)
dirty = []
for line in open(mapfile):
    offset, length, _, kind = line.split()
    if kind == "dirty":
        dirty.append([int(offset), int(length)])
assert dirty == extents, ("nbdinfo --map", dirty, extents)

view = nbd.NBD()
view.set_export_name("backup")
view.connect_unix(sock)
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:dirty-bitmap:cp1")
h.connect_unix(qsock)
assert h.can_meta_context("qemu:dirty-bitmap:cp1")
assert h.can_meta_context("base:allocation")
size = h.get_size()
assert size == view.get_size() == 16 << 20
seen = []
offset = 0
while offset < size:
    got = {}

    def status(context, start, entries, err):
        got[context] = entries
    h.block_status(min(size - offset, 4 << 20), offset, status)
    entries = got["qemu:dirty-bitmap:cp1"]
    length, flags = entries[0], entries[1]
    if flags & 1:
        data = h.pread(length, offset)
        assert data == view.pread(length, offset), offset
        assert data.count(b"a") == len(data) or \
            data.count(b"a") + data.count(0) == len(data), offset
        assert b"b" not in data, "the view shows a later write at %d" % offset
        if seen and seen[-1][0] + seen[-1][1] == offset:
            seen[-1][1] += length
        else:
            seen.append([offset, length])
    offset += length
assert seen == extents, ("block_status", seen, extents)
print("qemu-nbd served %d dirty extents of cp1 with the view's data" %
      len(seen))
h.shutdown()
view.shutdown()
c.close()
EOF
kill "$pid"
qmp_ok x-dirtybitmap-view-remove '{"name": "backup"}'
stop_cleanly
qemu_check "$sidecar"
