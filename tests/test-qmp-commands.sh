#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Every QMP command and its errors: add (defaults, granularity,
# persistent, disabled; duplicate, invalid and reserved names, invalid
# granularities), remove, clear, enable, disable, merge between
# granularities, transaction, query, store and extents (clipping to the
# window, pages of 1024), with "node".  Writes go through the export;
# each bitmap's count and dirty ranges are checked against a model of
# what it must hold, and a few against ranges worked out by hand.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
# The last 64K granule holds 12345 bytes, the last 4K one 57, the last
# 512-byte one 57.
size=$((16 * 1024 * 1024 + 12345))
export PYTHONPATH="$abs_top_srcdir/tests/helpers"

start_nbdkit_background "$sock" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
wait_control

/usr/bin/python3 - "$ctl" "nbd+unix:///?socket=$sock" $size <<'EOF'
import sys
import nbd
from qmp import Client, all_extents, expected_extents

ctl, uri, S = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Client(ctl)
h = nbd.NBD()
h.connect_uri(uri)
assert h.get_size() == S

def check(what, actual, expected):
    if actual != expected:
        raise AssertionError("%s:\n expected %r\n got      %r"
                             % (what, expected, actual))

def refused(command, arguments, text):
    desc = c.fail(command, arguments)
    if text not in desc:
        raise AssertionError("%s %s: %r does not say %r"
                             % (command, arguments, desc, text))

# The model: every bitmap's granularity, flags and dirty granules.
model = {}

def m_add(name, g=65536, persistent=False, disabled=False):
    model[name] = {"g": g, "persistent": persistent, "rec": not disabled,
                   "dirty": set()}

def covering(offset, length, g):
    return range(offset // g, (offset + length - 1) // g + 1)

def m_write(offset, length):
    for b in model.values():
        if b["rec"]:
            b["dirty"].update(covering(offset, length, b["g"]))

def m_merge(target, sources):
    t = model[target]
    for s in sources:
        src = model[s]
        for k in list(src["dirty"]):
            start = k * src["g"]
            t["dirty"].update(covering(start, min(src["g"], S - start), t["g"]))

def m_extents(name):
    b = model[name]
    return expected_extents([(k * b["g"], b["g"]) for k in b["dirty"]],
                            b["g"], S)

def m_query():
    return sorted(({"name": n, "granularity": b["g"], "recording": b["rec"],
                    "persistent": b["persistent"], "inconsistent": False,
                    "busy": False,
                    "count": sum(l for _, l in m_extents(n))}
                   for n, b in model.items()), key=lambda b: b["name"])

def query():
    return sorted(c.ok("query-dirty-bitmaps"), key=lambda b: b["name"])

def verify(when):
    check("query %s" % when, query(), m_query())
    for n in model:
        check("extents of %s %s" % (n, when), all_extents(c, n), m_extents(n))

def add(name, **kw):
    arguments = {"name": name}
    arguments.update(kw)
    check("add %s" % arguments, c.ok("block-dirty-bitmap-add", arguments), {})
    m_add(name, kw.get("granularity", 65536), kw.get("persistent", False),
          kw.get("disabled", False))

def write(offset, length, how="pwrite"):
    if how == "pwrite":
        h.pwrite(b"w" * length, offset)
    elif how == "zero":
        h.zero(length, offset)
    else:
        h.trim(length, offset)
    m_write(offset, length)

# No bitmap yet; the journal is never listed.
check("empty query", c.ok("query-dirty-bitmaps"), [])

# add with the defaults: exactly what query reports.
check("add default", c.ok("block-dirty-bitmap-add", {"name": "def"}), {})
m_add("def")
check("query after add", c.ok("query-dirty-bitmaps"),
      [{"name": "def", "granularity": 65536, "recording": True,
        "persistent": False, "inconsistent": False, "busy": False,
        "count": 0}])
add("g4k", granularity=4096)
add("pers", persistent=True)
add("off", disabled=True)
add("fine", granularity=512, persistent=True, disabled=False, node="")
add("coarse", granularity=2147483648, persistent=False, disabled=True)
add("huge", granularity=2147483648)
verify("after adding")

# Duplicates, whether persistent or not.
for name, kw in (("def", {}), ("def", {"persistent": True}),
                 ("pers", {}), ("pers", {"persistent": True}),
                 ("off", {"granularity": 4096})):
    arguments = dict(kw, name=name)
    refused("block-dirty-bitmap-add", arguments,
            "a bitmap named '%s' already exists" % name)

# Granularities: powers of two from 512 to 2G only.
for g in (0, 1000, 256, 511, 4294967296, 65537, 3 * 65536, 2**62, 2**63 - 1):
    refused("block-dirty-bitmap-add", {"name": "bad", "granularity": g},
            "Granularity must be a power of 2 from 512 to 2147483648")
refused("block-dirty-bitmap-add", {"name": "bad", "granularity": -4096},
        "must not be negative")

# Names: 1 to 1023 bytes (bytes, not characters); the journal's is
# reserved.
for name in ("", "a" * 1024, "\u00e9" * 512, "a" * 4096):
    refused("block-dirty-bitmap-add", {"name": name},
            "Bitmap name must be 1 to 1023 bytes long, not %d"
            % len(name.encode()))
for persistent in (False, True):
    refused("block-dirty-bitmap-add",
            {"name": "nbdkit-dirtybitmap-journal", "persistent": persistent},
            "reserved")
add("a" * 1023)
add("\u00e9" * 511 + "b", persistent=True)
add("x", persistent=True, disabled=True)
verify("after the long names")
for name in ("a" * 1023, "\u00e9" * 511 + "b", "x"):
    check("remove %s" % name[:8],
          c.ok("block-dirty-bitmap-remove", {"name": name}), {})
    del model[name]
verify("after removing the long names")
check("nothing refused was added", sorted(b["name"] for b in query()),
      sorted(model))

# Unknown names.
for command in ("block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
                "block-dirty-bitmap-enable", "block-dirty-bitmap-disable",
                "x-dirtybitmap-extents"):
    refused(command, {"name": "ghost"}, "no bitmap named 'ghost'")
refused("block-dirty-bitmap-merge", {"target": "ghost", "bitmaps": ["def"]},
        "no bitmap named 'ghost'")
refused("block-dirty-bitmap-merge", {"target": "def", "bitmaps": ["ghost"]},
        "no bitmap named 'ghost'")
# Names are case sensitive.
refused("block-dirty-bitmap-remove", {"name": "DEF"}, "no bitmap named 'DEF'")

# "node": "" names the export, anything else is refused, on every command.
for command, arguments in (
        ("block-dirty-bitmap-add", {"name": "n1"}),
        ("block-dirty-bitmap-remove", {"name": "def"}),
        ("block-dirty-bitmap-clear", {"name": "def"}),
        ("block-dirty-bitmap-enable", {"name": "def"}),
        ("block-dirty-bitmap-disable", {"name": "def"}),
        ("block-dirty-bitmap-merge", {"target": "def", "bitmaps": []}),
        ("x-dirtybitmap-extents", {"name": "def"})):
    refused(command, dict(arguments, node="other"),
            "Cannot find node 'other'")
refused("block-dirty-bitmap-merge",
        {"target": "def", "bitmaps": [{"node": "other", "name": "g4k"}]},
        "Cannot find node 'other'")
check("node '' on add", c.ok("block-dirty-bitmap-add",
                             {"node": "", "name": "n1"}), {})
check("node '' on remove", c.ok("block-dirty-bitmap-remove",
                                {"node": "", "name": "n1"}), {})
check("node '' on extents", c.ok("x-dirtybitmap-extents",
                                 {"node": "", "name": "def"}),
      {"extents": [], "next": None})
verify("after the refused commands")

# Writes, zeroes and trims, counted at each granularity, the last
# granule partial.
write(0, 1)
write(3 * 65536 - 50, 100)                 # across granules 2 and 3
write(1024 * 1024, 70000, "zero")           # 64K granules 16 and 17
write(2 * 1024 * 1024 + 4096, 4096, "trim")
write(S - 1, 1)                            # the last byte
verify("after the first writes")
# By hand: the 64K bitmap, with its short last granule.
check("def by hand", all_extents(c, "def"),
      [[0, 65536], [131072, 131072], [1048576, 131072], [2097152, 65536],
       [16777216, 12345]])
check("g4k by hand", all_extents(c, "g4k"),
      [[0, 4096], [196608 - 4096, 8192], [1048576, 73728],
       [2097152 + 4096, 4096], [16777216 + 12288, 57]])
check("def count by hand",
      [b["count"] for b in query() if b["name"] == "def"],
      [65536 + 131072 + 131072 + 65536 + 12345])
check("one granule of 2G", all_extents(c, "huge"), [[0, S]])
check("off records nothing",
      [b["count"] for b in query() if b["name"] in ("off", "coarse")], [0, 0])

# clear: empty, and still recording.
check("clear", c.ok("block-dirty-bitmap-clear", {"name": "def"}), {})
model["def"]["dirty"].clear()
check("cleared extents", c.ok("x-dirtybitmap-extents", {"name": "def"}),
      {"extents": [], "next": None})
verify("after clear")
# Clearing twice, and clearing a disabled bitmap, are no-ops.
check("clear again", c.ok("block-dirty-bitmap-clear", {"name": "def"}), {})
check("clear disabled", c.ok("block-dirty-bitmap-clear", {"name": "off"}), {})

# disable: writes no longer counted; enable: counted again.
check("disable", c.ok("block-dirty-bitmap-disable", {"name": "g4k"}), {})
model["g4k"]["rec"] = False
check("disable again", c.ok("block-dirty-bitmap-disable", {"name": "g4k"}),
      {})
write(5 * 1024 * 1024 + 100, 8000)
verify("after writes with g4k disabled")
check("enable", c.ok("block-dirty-bitmap-enable", {"name": "g4k"}), {})
check("enable again", c.ok("block-dirty-bitmap-enable", {"name": "g4k"}), {})
model["g4k"]["rec"] = True
check("enable off", c.ok("block-dirty-bitmap-enable", {"name": "off"}), {})
model["off"]["rec"] = True
write(6 * 1024 * 1024 - 1, 2, "zero")
write(4096 * 7 + 1, 10)
verify("after enabling")
# The finest recording bitmap disabled and enabled again: the others
# keep their own granularity meanwhile, and it records finely again.
check("disable fine", c.ok("block-dirty-bitmap-disable", {"name": "fine"}),
      {})
model["fine"]["rec"] = False
write(9 * 1048576 + 700, 10)
write(9 * 1048576 + 5000, 1, "trim")
verify("with the finest bitmap disabled")
check("enable fine", c.ok("block-dirty-bitmap-enable", {"name": "fine"}), {})
model["fine"]["rec"] = True
write(9 * 1048576 + 1700, 10)
write(9 * 1048576 + 9000, 1, "zero")
verify("with the finest bitmap enabled again")
check("fine by hand",
      all_extents(c, "fine", 9 * 1048576, 1048576),
      [[9 * 1048576 + 1536, 512], [9 * 1048576 + 8704, 512]])

# merge: 4K into 64K, 64K into 4K, several sources of any granularity,
# names as strings and as {"node", "name"}.
add("m64", disabled=True)
add("m4", granularity=4096, disabled=True)
add("m512", granularity=512, disabled=True)
check("merge 4K into 64K", c.ok("block-dirty-bitmap-merge",
                                {"target": "m64", "bitmaps": ["g4k"]}), {})
m_merge("m64", ["g4k"])
check("merge 64K into 4K",
      c.ok("block-dirty-bitmap-merge",
           {"target": "m4", "bitmaps": [{"node": "", "name": "def"}]}), {})
m_merge("m4", ["def"])
check("merge several",
      c.ok("block-dirty-bitmap-merge",
           {"target": "m512", "node": "",
            "bitmaps": ["pers", {"name": "g4k"},
                        {"node": "", "name": "coarse"}, "m4"]}), {})
m_merge("m512", ["pers", "g4k", "coarse", "m4"])
check("merge nothing", c.ok("block-dirty-bitmap-merge",
                            {"target": "m64", "bitmaps": []}), {})
check("merge into itself", c.ok("block-dirty-bitmap-merge",
                                {"target": "m64", "bitmaps": ["m64"]}), {})
verify("after merging")
# By hand: 64K granules of what g4k holds; 4K granules of what def holds
# (the short last granule stays short).
check("m64 by hand", all_extents(c, "m64"),
      [[0, 65536], [131072, 131072], [1048576, 131072], [2097152, 65536],
       [6 * 1048576 - 65536, 131072], [9 * 1048576, 65536],
       [16777216, 12345]])
check("m4 by hand", all_extents(c, "m4"),
      [[0, 65536], [5 * 1048576, 65536], [6 * 1048576 - 65536, 131072],
       [9 * 1048576, 65536]])
# A disabled target does not record what is written after the merge.
write(8 * 1048576, 1)
verify("after a write following the merges")
# Refused merges change nothing.
before = query()
refused("block-dirty-bitmap-merge",
        {"target": "m4", "bitmaps": ["g4k", "ghost"]},
        "no bitmap named 'ghost'")
refused("block-dirty-bitmap-merge", {"target": "m4", "bitmaps": ["g4k", 5]},
        "'bitmaps[1]' must be a")
refused("block-dirty-bitmap-merge", {"target": "m4", "bitmaps": [{}]},
        "missing argument 'name'")
refused("block-dirty-bitmap-merge",
        {"target": "m4", "bitmaps": [{"name": "g4k", "bogus": 1}]},
        "unexpected argument 'bogus'")
refused("block-dirty-bitmap-merge", {"target": 4, "bitmaps": []},
        "'target' must be a")
check("refused merges change nothing", query(), before)

# A fresh 4K bitmap merged into a fresh 64K one, and the reverse, worked
# out by hand on writes of their own.
add("s4", granularity=4096)
add("s64")
add("d64", disabled=True)
add("d4", granularity=4096, disabled=True)
write(10 * 1048576 + 3 * 4096 + 5, 1)      # 4K granule 2563, 64K 160
write(12 * 1048576 - 1, 2)                 # 4K 3071/3072, 64K 191/192
c.ok("block-dirty-bitmap-merge", {"target": "d64", "bitmaps": ["s4"]})
c.ok("block-dirty-bitmap-merge", {"target": "d4", "bitmaps": ["s64"]})
m_merge("d64", ["s4"])
m_merge("d4", ["s64"])
check("d64 by hand", all_extents(c, "d64"),
      [[10 * 1048576, 65536], [12 * 1048576 - 65536, 131072]])
check("d4 by hand", all_extents(c, "d4"),
      [[10 * 1048576, 65536], [12 * 1048576 - 65536, 131072]])
check("s4 by hand", all_extents(c, "s4"),
      [[10 * 1048576 + 3 * 4096, 4096], [12 * 1048576 - 4096, 8192]])
# 2G into 512 bytes, and 512 bytes into 2G.
add("h512", granularity=512, disabled=True)
add("h2g", granularity=2147483648, disabled=True)
c.ok("block-dirty-bitmap-merge", {"target": "h512", "bitmaps": ["huge"]})
c.ok("block-dirty-bitmap-merge", {"target": "h2g", "bitmaps": ["fine"]})
m_merge("h512", ["huge"])
m_merge("h2g", ["fine"])
check("h512 by hand", all_extents(c, "h512"), [[0, S]])
check("h2g by hand", all_extents(c, "h2g"), [[0, S]])
check("counts by hand",
      [b["count"] for b in query() if b["name"] in ("h2g", "h512")], [S, S])
verify("after the hand-checked merges")

# Extents: clipped to the window, offset and length inside granules.
check("window inside granules",
      c.ok("x-dirtybitmap-extents",
           {"name": "def", "offset": 5 * 1048576 + 1000, "length": 2000000}),
      {"extents": [{"offset": 5 * 1048576 + 1000, "length": 65536 - 1000},
                   {"offset": 6 * 1048576 - 65536, "length": 131072}],
       "next": None})
check("window ending inside a granule",
      c.ok("x-dirtybitmap-extents",
           {"name": "def", "offset": 6 * 1048576 - 1, "length": 2}),
      {"extents": [{"offset": 6 * 1048576 - 1, "length": 2}], "next": None})
check("window ending inside the last granule",
      c.ok("x-dirtybitmap-extents",
           {"name": "m64", "offset": 16777216 + 10, "length": 100}),
      {"extents": [{"offset": 16777216 + 10, "length": 100}], "next": None})
check("window to the end",
      c.ok("x-dirtybitmap-extents",
           {"name": "m64", "offset": 16777216 + 10,
            "length": 2**63 - 1}),
      {"extents": [{"offset": 16777216 + 10, "length": 12335}],
       "next": None})
check("clean window", c.ok("x-dirtybitmap-extents",
                           {"name": "def", "offset": 65536 * 100,
                            "length": 65536 * 10}),
      {"extents": [], "next": None})
check("empty window", c.ok("x-dirtybitmap-extents",
                           {"name": "def", "offset": 6 * 1048576,
                            "length": 0}),
      {"extents": [], "next": None})
check("window at the end", c.ok("x-dirtybitmap-extents",
                                {"name": "m64", "offset": S}),
      {"extents": [], "next": None})
refused("x-dirtybitmap-extents", {"name": "def", "offset": S + 1},
        "past the end")
refused("x-dirtybitmap-extents", {"name": "def", "offset": 2**62},
        "past the end")
refused("x-dirtybitmap-extents", {"name": "def", "offset": -1},
        "must not be negative")
refused("x-dirtybitmap-extents", {"name": "def", "length": -1},
        "must not be negative")

# Pages: 1500 separate dirty runs (one byte every other 4K granule),
# read 1024 at a time.
add("p", granularity=4096)
for i in range(1500):
    h.pwrite(b"p", i * 8192 + (i % 4096))
    m_write(i * 8192 + (i % 4096), 1)
runs = [{"offset": i * 8192, "length": 4096} for i in range(1500)]
page1 = c.ok("x-dirtybitmap-extents", {"name": "p"})
check("page 1", page1, {"extents": runs[:1024], "next": 1024 * 8192})
page2 = c.ok("x-dirtybitmap-extents", {"name": "p", "offset": page1["next"]})
check("page 2", page2, {"extents": runs[1024:], "next": None})
# Exactly 1024 runs in the window: no next page.
check("1024 runs", c.ok("x-dirtybitmap-extents",
                        {"name": "p", "offset": 0,
                         "length": 1023 * 8192 + 4096}),
      {"extents": runs[:1024], "next": None})
# One byte more: the next page starts at run 1024.
check("1024 runs and a byte",
      c.ok("x-dirtybitmap-extents",
           {"name": "p", "offset": 0, "length": 1024 * 8192 + 1}),
      {"extents": runs[:1024], "next": 1024 * 8192})
check("the byte",
      c.ok("x-dirtybitmap-extents",
           {"name": "p", "offset": 1024 * 8192, "length": 1}),
      {"extents": [{"offset": 1024 * 8192, "length": 1}], "next": None})
# A window starting and ending inside runs, paged.
first = c.ok("x-dirtybitmap-extents",
             {"name": "p", "offset": 100, "length": 1400 * 8192})
check("clipped page 1", first,
      {"extents": [{"offset": 100, "length": 3996}] + runs[1:1024],
       "next": 1024 * 8192})
rest = c.ok("x-dirtybitmap-extents",
            {"name": "p", "offset": first["next"],
             "length": 1400 * 8192 + 100 - first["next"]})
check("clipped page 2", rest,
      {"extents": runs[1024:1400] + [{"offset": 1400 * 8192, "length": 100}],
       "next": None})
# The chain of pages covers the set exactly (64K bitmaps see the same
# writes as whole granules).
verify("after the pages")

# transaction: all actions or none.
check("empty transaction", c.ok("transaction", {"actions": []}), {})
check("transaction",
      c.ok("transaction", {"actions": [
          {"type": "block-dirty-bitmap-add",
           "data": {"name": "cp", "persistent": True}},
          {"type": "block-dirty-bitmap-add",
           "data": {"name": "frozen", "disabled": True,
                    "granularity": 4096}},
          {"type": "block-dirty-bitmap-merge",
           "data": {"target": "frozen", "bitmaps": ["def"]}},
          {"type": "block-dirty-bitmap-clear", "data": {"name": "def"}},
          {"type": "block-dirty-bitmap-disable", "data": {"name": "off"}},
          {"type": "block-dirty-bitmap-remove", "data": {"name": "m512"}}],
          "properties": {"completion-mode": "individual"}}), {})
m_add("cp", persistent=True)
m_add("frozen", 4096, disabled=True)
m_merge("frozen", ["def"])
model["def"]["dirty"].clear()
model["off"]["rec"] = False
del model["m512"]
verify("after a transaction")
# A name removed and added again in one transaction.
check("remove and add", c.ok("transaction", {"actions": [
    {"type": "block-dirty-bitmap-remove", "data": {"name": "s4"}},
    {"type": "block-dirty-bitmap-add",
     "data": {"name": "s4", "granularity": 65536, "persistent": True}}]}), {})
m_add("s4", persistent=True)
verify("after removing and adding again")
before = query()
for actions, text in (
        ([{"type": "block-dirty-bitmap-add", "data": {"name": "t1"}},
          {"type": "block-dirty-bitmap-remove", "data": {"name": "ghost"}}],
         "no bitmap named 'ghost'"),
        ([{"type": "block-dirty-bitmap-add", "data": {"name": "t1"}},
          {"type": "block-dirty-bitmap-add", "data": {"name": "t1"}}],
         "a bitmap named 't1' already exists"),
        ([{"type": "block-dirty-bitmap-clear", "data": {"name": "def"}},
          {"type": "block-dirty-bitmap-remove", "data": {"name": "g4k"}},
          {"type": "block-dirty-bitmap-enable", "data": {"name": "g4k"}}],
         "no bitmap named 'g4k'"),
        ([{"type": "block-dirty-bitmap-disable", "data": {"name": "def"}},
          {"type": "block-dirty-bitmap-add",
           "data": {"name": "t1", "granularity": 1000}}],
         "Granularity must be a power of 2"),
        ([{"type": "block-dirty-bitmap-clear", "data": {"name": "def"}},
          {"type": "block-dirty-bitmap-add",
           "data": {"name": "t1", "node": "other"}}],
         "Cannot find node 'other'"),
        ([{"type": "query-dirty-bitmaps", "data": {}}],
         "is not a bitmap command"),
        ([{"type": "transaction", "data": {"actions": []}}],
         "is not a bitmap command"),
        ([{"type": "block-dirty-bitmap-clear"}],
         "missing argument 'actions[0].data'"),
        ([{"type": "block-dirty-bitmap-clear", "data": {"name": "def"}},
          {"data": {"name": "def"}}],
         "missing argument 'type'"),
        ([{"type": "block-dirty-bitmap-clear", "data": []}],
         "'data' must be a"),
        ([{"type": 1, "data": {}}], "'type' must be a"),
        ([{"type": "block-dirty-bitmap-clear", "data": {"name": "def"},
           "extra": 1}], "unexpected argument 'extra'"),
        (["block-dirty-bitmap-clear"], "'actions[0]' must be an object")):
    refused("transaction", {"actions": actions}, text)
for properties, text in (({"completion-mode": "grouped"}, "not supported"),
                         ({"other": 1}, "not supported"),
                         ([], "'properties' must be a")):
    refused("transaction", {"actions": [], "properties": properties}, text)
refused("transaction", {"actions": [], "bogus": 1},
        "unexpected argument 'bogus'")
check("refused transactions change nothing", query(), before)

# store: nothing to say.
check("store", c.ok("x-dirtybitmap-store"), {})

# Remove everything.
for name in sorted(model):
    check("remove %s" % name, c.ok("block-dirty-bitmap-remove",
                                   {"name": name}), {})
check("all removed", c.ok("query-dirty-bitmaps"), [])
h.shutdown()
c.close()
EOF

kill -TERM "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
qemu_check "$sidecar"
for name in pers fine cp s4 x; do
  [ "$(bitmap_flags "$sidecar" $name)" = absent ] ||
    fail "removed bitmap $name is still in the sidecar"
done

# On a disk of 4T, 512-byte granules would need more bitmap data than
# QEMU accepts (512 MiB): refused, persistent or not; 4K is fine.
rm -f "$sock"
start_nbdkit_background "$sock" memory 4T \
  dirtybitmap-file="$tmpdir/big.qcow2" dirtybitmap-control="$ctl"
wait_control
/usr/bin/python3 - "$ctl" <<'EOF'
import sys
from qmp import Client
c = Client(sys.argv[1])
for persistent in (False, True):
    desc = c.fail("block-dirty-bitmap-add",
                  {"name": "a", "granularity": 512, "persistent": persistent})
    assert desc == ("Granularity 512 is too fine for a disk of 4398046511104 "
                    "bytes (more than QEMU's 512 MiB of bitmap data)"), desc
assert c.ok("block-dirty-bitmap-add", {"name": "a", "granularity": 4096}) == {}
assert [b["name"] for b in c.ok("query-dirty-bitmaps")] == ["a"]
EOF
kill -TERM "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
qemu_check "$tmpdir/big.qcow2"
