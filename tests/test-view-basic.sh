#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A point-in-time view, the basic cycle: a disk filled with a pattern,
# a view added over the control socket, the disk overwritten, zeroed
# and trimmed through the tracked export; the view still reads the
# pattern, byte for byte, refuses writes, reports what it copied, and
# is gone once removed.  A view of bitmap cp1 freezes only what cp1
# holds and refuses the rest with EPERM.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
disk="$tmpdir/disk.raw"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/qmp.sock"
uri="nbd+unix:///?socket=$sock"
size=$((4 * 1024 * 1024))

/usr/bin/python3 -c "
import sys
pattern = bytes((i * 7 + i // 4096) & 0xff for i in range(65536))
open(sys.argv[1], 'wb').write(pattern * ($size // 65536))
" "$disk"
cp "$disk" "$tmpdir/before.raw"

start_nbdkit_background "$sock" file "$disk" \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
wait_control

# A first writer starts tracking; cp1 records from then on.
qmp_ok block-dirty-bitmap-add '{"name":"cp1","persistent":true}'
write_ranges "65536 4096" a

qmp_ok x-dirtybitmap-view-add '{"name":"full"}' \
  x-dirtybitmap-view-add '{"name":"inc","bitmap":"cp1"}'
cp "$disk" "$tmpdir/instant.raw"

/usr/bin/python3 -m nbd -u "$uri" -c '
h.pwrite(b"x" * 8192, 0)
h.pwrite(b"y" * 100000, 60000)
h.zero(65536, 1048576)
h.trim(65536, 2097152)
h.pwrite(b"z" * 4096, 4096)
'

INSTANT="$tmpdir/instant.raw" /usr/bin/python3 -m nbd \
  -u "nbd+unix:///full?socket=$sock" -c '
import errno, os
want = open(os.environ["INSTANT"], "rb").read()
size = h.get_size()
assert size == len(want), size
got = b"".join(h.pread(min(1 << 20, size - o), o)
               for o in range(0, size, 1 << 20))
assert got == want, "the view differs from the disk at its instant"
assert h.can_trim()
try:
    h.pwrite(b"w" * 512, 0)
    raise AssertionError("a write to a view succeeded")
except nbd.Error as e:
    assert e.args[1] == errno.EPERM, e
'

# Block status: all data, though the live disk now has zeroes and holes.
map="$(nbdinfo --map "nbd+unix:///full?socket=$sock")"
[ "$(echo "$map" | awk '{ print $1, $2, $3 }')" = "0 $size 0" ] ||
  fail "the view's map is not all data: $map"

# The bitmap view: only cp1'"'"'s granule (64 KiB at 65536) is frozen.
INSTANT="$tmpdir/instant.raw" /usr/bin/python3 -m nbd \
  -u "nbd+unix:///inc?socket=$sock" -c '
import errno, os
want = open(os.environ["INSTANT"], "rb").read()
assert h.pread(65536, 65536) == want[65536:131072]
try:
    h.pread(4096, 0)
    raise AssertionError("a read outside the bitmap succeeded")
except nbd.Error as e:
    assert e.args[1] == errno.EPERM, e
'
grep -q "view 'inc': \[0, 4096) was not frozen (not dirty in bitmap 'cp1'" \
  "$sock.err" || fail "no error message for the unfrozen read"

out="$(/usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" \
       x-dirtybitmap-query-views)"
/usr/bin/python3 -c '
import json, sys
views = json.loads(sys.argv[1])["return"]
assert [v["name"] for v in views] == ["full", "inc"], views
full, inc = views
assert "bitmap" not in full and inc["bitmap"] == "cp1", views
assert full["granularity"] == 65536 and full["frozen-bytes"] == int(sys.argv[2])
assert full["state"] == "ok" and full["copied-bytes"] > 0, views
assert full["scratch-bytes"] == full["copied-bytes"], views
assert inc["frozen-bytes"] == 65536 and inc["copied-bytes"] == 65536, views
' "$out" "$size" || fail "query-views: $out"

# Nothing of the scratch files is left beside the sidecar.
[ -z "$(ls -A "$tmpdir" | grep -v -e '^sidecar.qcow2$' -e '\.raw$' \
        -e '^nbd.sock' -e '^qmp.sock' -e '^sanitizer-bin$')" ] ||
  fail "files left in $tmpdir: $(ls -A "$tmpdir")"

qmp_ok x-dirtybitmap-view-remove '{"name":"full"}'
if /usr/bin/python3 -m nbd -u "nbd+unix:///full?socket=$sock" \
     -c 'h.pread(512, 0)' 2>/dev/null; then
  fail "the removed view still serves"
fi
out="$(/usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" \
       x-dirtybitmap-view-remove '{"name":"full"}')"
[[ "$out" == *"no view named 'full'"* ]] || fail "second remove: $out"

kill -TERM "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || fail "nbdkit exited with status $status"
qemu_check "$sidecar"
