#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Views in transactions, all or none with the bitmap actions.  The
# checkpoint transaction (add cp2, disable cp1, view of cp1) takes
# effect as a whole; then transactions with one failing action, the
# view's or a bitmap's, leave no view added or removed and no bitmap
# changed, and the view keeps serving what it froze; a transaction
# removes the view and the frozen checkpoint together.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sock="$tmpdir/sock"
ctl="$tmpdir/ctl"
start_with_control 16M dirtybitmap=cp1
uri="nbd+unix:///?socket=$sock"
write_ranges "65536 4096
3000000 200000" a

HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
/usr/bin/python3 - "$ctl" "$sock" <<'EOF'
import os, sys
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp

ctl, sock = sys.argv[1:]
c = qmp.Client(ctl)


def act(type, **data):
    return {"type": type, "data": data}


def add_view(name, **data):
    return act("x-dirtybitmap-view-add", name=name, **data)


def state():
    bitmaps = sorted((b["name"], b["recording"], b["count"])
                     for b in c.ok("query-dirty-bitmaps"))
    views = [(v["name"], v.get("bitmap"), v["frozen-bytes"], v["state"])
             for v in c.ok("x-dirtybitmap-query-views")]
    return bitmaps, views


frozen = qmp.all_extents(c, "cp1")
c.ok("transaction", {"actions": [
    act("block-dirty-bitmap-add", name="cp2", persistent=True),
    act("block-dirty-bitmap-disable", name="cp1"),
    add_view("v1", bitmap="cp1")]})
h = nbd.NBD()
h.connect_unix(sock)
h.pwrite(b"b" * (4 << 20), 0)          # after the instant: in cp2 only
before = state()
assert before[1] == [("v1", "cp1", sum(l for _, l in frozen), "ok")], before
assert [b[:2] for b in before[0]] == [("cp1", False), ("cp2", True)], before

failing = {
    "a view that exists": [
        act("block-dirty-bitmap-add", name="cp3"),
        act("block-dirty-bitmap-disable", name="cp2"),
        add_view("v1", bitmap="cp2")],
    "a bitmap that does not exist": [
        act("block-dirty-bitmap-add", name="cp3"),
        add_view("v2", bitmap="no-such-bitmap")],
    "a view, then a failing bitmap action": [
        add_view("v2"),
        act("block-dirty-bitmap-disable", name="cp2"),
        act("block-dirty-bitmap-remove", name="no-such-bitmap")],
    "the same view twice": [
        add_view("v2"), act("block-dirty-bitmap-clear", name="cp2"),
        add_view("v2")],
    "a view with an empty name": [
        act("block-dirty-bitmap-add", name="cp3"), add_view("")],
    "removing a view that does not exist": [
        act("block-dirty-bitmap-add", name="cp3"),
        act("x-dirtybitmap-view-remove", name="v2")],
    "removing a view, then a failing action": [
        act("x-dirtybitmap-view-remove", name="v1"),
        act("block-dirty-bitmap-remove", name="cp1"),
        act("block-dirty-bitmap-merge", target="cp2",
            bitmaps=["no-such-bitmap"])],
}
for why, actions in failing.items():
    reply = c.execute("transaction", {"actions": actions})
    assert set(reply) == {"error"}, (why, reply)
    after = state()
    assert after == before, (why, before, after)
    print("refused, nothing changed: %s (%s)" % (why, reply["error"]["desc"]))

# The view still serves what it froze.
v = nbd.NBD()
v.set_export_name("v1")
v.connect_unix(sock)
for offset, length in frozen:
    data = v.pread(length, offset)
    assert b"b" not in data, ("the view shows a later write", offset)
    assert b"a" in data, offset

c.ok("transaction", {"actions": [
    act("x-dirtybitmap-view-remove", name="v1"),
    act("block-dirty-bitmap-remove", name="cp1")]})
bitmaps, views = state()
assert views == [] and [b[0] for b in bitmaps] == ["cp2"], (bitmaps, views)
try:
    v.pread(512, frozen[0][0])
    raise AssertionError("a removed view served a read")
except nbd.Error:
    pass
c.close()
EOF
stop_cleanly
qemu_check "$tmpdir/sidecar.qcow2"
[ "$(bitmap_flags "$tmpdir/sidecar.qcow2" cp1)" = absent ] ||
  fail "cp1 is still in the sidecar"
[ "$(bitmap_flags "$tmpdir/sidecar.qcow2" cp2)" = "auto 65536" ] ||
  fail "cp2 is not recording in the sidecar"
