#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# 64 bitmaps added while the export is written, each holding exactly
# the writes made after its addition.
#
# Phase 1: 48 bitmaps of granularities from 512 to 1M, persistent or
# not, added one after another (8 of them in one transaction), with
# writes between the additions.
#
# Phase 2: 16 more added (some in pairs by one transaction) while a
# thread keeps writing, one request after another, each on its own
# 8K slot.  Each of them must hold every request from some point on
# and none before (a request counts whole, or not at all), the point
# between the last request that completed before the command was sent
# and the first one that started after its reply; bitmaps added
# together hold the same requests.
#
# Every bitmap's dirty ranges are checked over QMP, then after a clean
# stop the persistent ones as QEMU serves them.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
size=$((64 * 1024 * 1024))
export PYTHONPATH="$abs_top_srcdir/tests/helpers"

start_nbdkit_background "$sock" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
wait_control

mkdir "$tmpdir/expected"
/usr/bin/python3 - "$ctl" "nbd+unix:///?socket=$sock" $size \
  "$tmpdir/expected" <<'EOF'
import os, random, sys, threading, time
import nbd
from qmp import Client, all_extents, expected_extents

ctl, uri, S, outdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = Client(ctl)
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(1234)
GRANULARITIES = [512, 4096, 65536, 1048576]
SEQ_END = 48 * 1048576           # phase 1 writes below, phase 2 above

def check(what, actual, expected):
    if actual != expected:
        raise AssertionError("%s:\n expected %r\n got      %r"
                             % (what, expected, actual))

bitmaps = {}                     # name -> granularity, persistent, ranges
order = []

def added(name, g, persistent):
    bitmaps[name] = {"g": g, "persistent": persistent, "ranges": []}
    order.append(name)

def write(offset, length):
    h.pwrite(bytes([len(order) % 256]) * length, offset)
    for b in bitmaps.values():
        b["ranges"].append((offset, length))

def random_writes(n):
    for _ in range(n):
        length = rng.choice([1, 512, 4096, 5000, 65536, 300000])
        write(rng.randrange(0, SEQ_END - length), length)

# Phase 1.
for i in range(48):
    if 24 <= i < 32:
        if i == 24:
            actions = []
            for j in range(24, 32):
                g = GRANULARITIES[j % 4]
                actions.append({"type": "block-dirty-bitmap-add",
                                "data": {"name": "b%02d" % j,
                                         "granularity": g,
                                         "persistent": j % 2 == 0}})
                added("b%02d" % j, g, j % 2 == 0)
            check("transaction", c.ok("transaction", {"actions": actions}),
                  {})
    else:
        g = GRANULARITIES[i % 4]
        check("add b%02d" % i,
              c.ok("block-dirty-bitmap-add",
                   {"name": "b%02d" % i, "granularity": g,
                    "persistent": i % 2 == 0}), {})
        added("b%02d" % i, g, i % 2 == 0)
    random_writes(2)

def verify(names, when):
    infos = {b["name"]: b for b in c.ok("query-dirty-bitmaps")}
    for name in names:
        b = bitmaps[name]
        expected = expected_extents(b["ranges"], b["g"], S)
        check("extents of %s %s" % (name, when), all_extents(c, name),
              expected)
        check("query of %s %s" % (name, when), infos[name],
              {"name": name, "granularity": b["g"], "recording": True,
               "persistent": b["persistent"], "inconsistent": False,
               "busy": False, "count": sum(l for _, l in expected)})

verify(order, "after phase 1")

# Phase 2: a writer thread, one request at a time, each on a slot of
# its own above SEQ_END.
SLOT, SLOTS = 8192, (S - SEQ_END) // 8192
log = []                         # (start time, end time) per request
stop = threading.Event()
errors = []

def writer():
    try:
        w = nbd.NBD()
        w.connect_uri(uri)
        for k in range(SLOTS):
            if stop.is_set():
                break
            t0 = time.monotonic()
            w.pwrite(b"k" * 5000, SEQ_END + k * SLOT + 1000)
            log.append((t0, time.monotonic()))
            time.sleep(0.001)
        w.shutdown()
    except BaseException as e:
        errors.append(repr(e))

thread = threading.Thread(target=writer)
thread.start()
while not log and thread.is_alive():
    time.sleep(0.001)
groups = []                      # (names, time sent, time of the reply)
j = 48
while j < 64:
    names = ["b%02d" % j] if j % 3 else ["b%02d" % j, "b%02d" % (j + 1)]
    names = names[:64 - j]
    actions = [{"type": "block-dirty-bitmap-add",
                "data": {"name": n, "granularity": 4096 if k % 2 else 512,
                         "persistent": (j + k) % 2 == 0}}
               for k, n in enumerate(names)]
    t_sent = time.monotonic()
    if len(names) == 1:
        reply = c.ok("block-dirty-bitmap-add", actions[0]["data"])
    else:
        reply = c.ok("transaction", {"actions": actions})
    t_reply = time.monotonic()
    check("add %s" % names, reply, {})
    for a in actions:
        added(a["data"]["name"], a["data"]["granularity"],
              a["data"]["persistent"])
    groups.append((names, t_sent, t_reply))
    j += len(names)
    time.sleep(0.01)
# Let a few more requests complete, then stop the writer.
m = len(log)
while len(log) < m + 3 and thread.is_alive():
    time.sleep(0.001)
stop.set()
thread.join()
if errors:
    raise AssertionError("writer: %s" % errors)
n = len(log)
assert n < SLOTS, "the writer ran out of slots"
requests = [(SEQ_END + k * SLOT + 1000, 5000) for k in range(n)]
# Phase 1's bitmaps recorded every request.
for name in order[:48]:
    bitmaps[name]["ranges"] += requests

def requests_in(name):
    """The requests bitmap NAME holds, each checked to be whole."""
    g = bitmaps[name]["g"]
    dirty = set()
    for off, length in all_extents(c, name):
        dirty.update(range(off // g, (off + length) // g))
    held = []
    for k, (off, length) in enumerate(requests):
        granules = set(range(off // g, (off + length - 1) // g + 1))
        if granules <= dirty:
            held.append(k)
        elif granules & dirty:
            raise AssertionError("%s holds part of request %d" % (name, k))
    return held

previous_cut = 0
cuts = []
for names, t_sent, t_reply in groups:
    held = requests_in(names[0])
    cut = held[0] if held else n
    check("requests held by %s" % names[0], held, list(range(cut, n)))
    for other in names[1:]:
        check("requests held by %s (added with %s)" % (other, names[0]),
              requests_in(other), held)
    # Completed before the command was sent: not held.  Started after
    # the reply: held.
    done_before = sum(1 for t0, t1 in log if t1 < t_sent)
    first_after = next((k for k, (t0, t1) in enumerate(log) if t0 > t_reply),
                       n)
    if not done_before <= cut <= first_after:
        raise AssertionError("%s holds requests from %d on, not between "
                             "%d and %d" % (names, cut, done_before,
                                            first_after))
    if cut < previous_cut:
        raise AssertionError("%s, added later, holds request %d that an "
                             "earlier one does not" % (names, cut))
    previous_cut = cut
    cuts.append(cut)
    for name in names:
        bitmaps[name]["ranges"] = requests[cut:]

# A last write, for everyone.
random_writes(1)
verify(order, "at the end")
check("64 bitmaps", sorted(b["name"] for b in c.ok("query-dirty-bitmaps")),
      sorted(order))
# Requests came before the first addition and after the last one.
if not (0 < cuts[0] and cuts[-1] < n):
    raise AssertionError("no request before the first addition or after "
                         "the last: cuts %s of %d requests" % (cuts, n))
if os.environ.get("QMP_TEST_VERBOSE"):
    print("phase 2: %d requests, cuts %s" % (n, cuts), file=sys.stderr)

for name in order:
    b = bitmaps[name]
    if b["persistent"]:
        with open(os.path.join(outdir, name), "w") as f:
            for off, length in expected_extents(b["ranges"], b["g"], S):
                f.write("%d %d\n" % (off, length))
        with open(os.path.join(outdir, name + ".g"), "w") as f:
            f.write("%d\n" % b["g"])
h.shutdown()
c.close()
EOF

kill -TERM "$nbdkit_pid"
wait_nbdkit_exit
[ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
qemu_check "$sidecar"
n=0
for f in "$tmpdir"/expected/b??; do
  name="${f##*/}"
  [ "$(bitmap_flags "$sidecar" "$name")" = "auto $(cat "$f.g")" ] ||
    fail "flags of $name: $(bitmap_flags "$sidecar" "$name")"
  assert_map "$sidecar" "$name" "$(cat "$f")"
  n=$((n + 1))
done
[ $n -eq 32 ] || fail "$n persistent bitmaps, expected 32"
# The others are not in the sidecar.
[ "$(qemu-img info --output=json "$sidecar" |
     /usr/bin/python3 -c '
import json, sys
info = json.load(sys.stdin)
print(len([b for b in info["format-specific"]["data"]["bitmaps"]
           if b["name"].startswith("b")]))')" = 32 ] ||
  fail "the sidecar does not hold exactly the 32 persistent bitmaps"
