#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A view shows the disk as it was at the instant it was added, byte for
# byte, whatever writes, zeroes and trims arrive meanwhile.
#
# Four writers (tests/helpers/viewload.py: each write stamped with its
# id, every request logged when sent and when acknowledged) load a
# 16 MiB memory disk filled with a known pattern.  Meanwhile views are
# added, in turn of the whole disk (x-dirtybitmap-view-add alone) and
# of a checkpoint (a transaction: add the next checkpoint, disable
# this one, add the view with "bitmap"), and read while the writers
# write the same ranges.  After the load each view is read again; all
# it returned must be the disk at its instant as the log tells it
# (requests in flight during the command wholly in or wholly out).
# A view of a checkpoint refuses reads outside it (EPERM), every view
# refuses writes (EPERM), and a removed view serves nothing.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sock="$tmpdir/sock"
ctl="$tmpdir/ctl"
start_with_control 16M dirtybitmap=cp0

HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
/usr/bin/python3 - "$sock" "$ctl" <<'EOF'
import os, random, sys, time
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp
from viewload import *

sock, ctl = sys.argv[1], sys.argv[2]
SIZE = 16 << 20
VIEWS = 6
rng = random.Random(7)


def uri(export=""):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def connect(export=""):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


c = qmp.Client(ctl)
fill(connect(), SIZE)
c.ok("block-dirty-bitmap-clear", {"name": "cp0"})

# The last 4 MiB are never written: a view of a checkpoint has
# granules that are not frozen.
load = Load(uri(), SIZE, writers=4, region=SIZE - (4 << 20))
load.start()
time.sleep(0.2)
views = []                  # name, instant, ranges, handle, reads
checkpoint = 0
try:
    for i in range(1, VIEWS + 1):
        name = "v%d" % i
        if i % 2:
            instant, _ = load.instant(
                lambda: c.ok("x-dirtybitmap-view-add", {"name": name}))
            ranges = [(0, SIZE)]
        else:
            old, new = "cp%d" % checkpoint, "cp%d" % (checkpoint + 1)
            actions = [
                {"type": "block-dirty-bitmap-add", "data": {"name": new}},
                {"type": "block-dirty-bitmap-disable", "data": {"name": old}},
                {"type": "x-dirtybitmap-view-add",
                 "data": {"name": name, "bitmap": old}}]
            instant, _ = load.instant(
                lambda: c.ok("transaction", {"actions": actions}))
            checkpoint += 1
            ranges = [tuple(e) for e in qmp.all_extents(c, old)]
            assert ranges and ranges[-1][0] + ranges[-1][1] < SIZE, \
                (name, ranges)
        views.append((name, instant, ranges, connect(name), []))
        # Read every open view where the writers write now.
        until = now() + 0.3
        while now() < until:
            for vname, _, vranges, h, reads in views:
                last = load.last_range(rng)
                for o, l in covered(vranges, *last) if last else ():
                    reads.append((o, h.pread(l, o)))
finally:
    time.sleep(0.2)
    load.finish()

info = c.ok("x-dirtybitmap-query-views")
assert [v["name"] for v in info] == [v[0] for v in views], info
flights = 0
for (name, instant, ranges, h, reads), v in zip(views, info):
    frozen = sum(l for _, l in ranges)
    assert v["state"] == "ok" and v["frozen-bytes"] == frozen and \
        v["granularity"] == 65536, v
    whole = ranges == [(0, SIZE)]
    assert ("bitmap" in v) != whole, v
    content = read_ranges(h, ranges)
    flights += check_view(load, name, instant, ranges, content, reads)
    if not whole:
        # The last granule, never written, is refused.
        err = read_error(h, SIZE - 512, 512)
        assert err == EPERM, "%s: read outside: errno %d" % (name, err)
    try:
        h.pwrite(b"x" * 512, 0)
        raise AssertionError("%s: a write to a view succeeded" % name)
    except nbd.Error as e:
        assert e.errnum == EPERM, (name, e)
    print("%s: %d ranges, %d bytes, %d reads while writing: as at its "
          "instant" % (name, len(ranges), frozen, len(reads)))
print("%d requests, %d in flight during the commands" %
      (sum(len(l) for l in load.logs), flights))

for name, _, _, h, _ in views:
    c.ok("x-dirtybitmap-view-remove", {"name": name})
    assert read_error(h, 0, 512) != 0, "%s served a read once removed" % name
assert c.ok("x-dirtybitmap-query-views") == []
c.close()
EOF
stop_cleanly
qemu_check "$tmpdir/sidecar.qcow2"
