#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): the bitmaps phase's QMP
# steps, on the control socket.  argv: socket, directory of qmp.py
# (tests/helpers), step, mode, bitmap count, how the bitmaps are made
# (BENCH_BITMAPS_ADD).  Step "prepare": one transaction making every
# bitmap of the mode empty and recording (clear the given ones, add the
# rest with persistent=false).  Step "check": every bitmap recording,
# all with the same dirty count, above 0; prints that count.
import sys
sock, helpers, step, mode, n, add = sys.argv[1:7]
sys.path.insert(0, helpers)
import qmp
n = int(n)
names = ["b%d" % i for i in range(n)]
c = qmp.Client(sock)
if step == "prepare":
    actions = []
    for i, name in enumerate(names):
        if add == "params" or i == 0:
            actions.append({"type": "block-dirty-bitmap-clear",
                            "data": {"name": name}})
        else:
            actions.append({"type": "block-dirty-bitmap-add",
                            "data": {"name": name, "persistent": False}})
    c.ok("transaction", {"actions": actions})
    infos = c.ok("query-dirty-bitmaps")
    bad = [b for b in infos if b["count"] != 0 or not b["recording"]]
    if sorted(b["name"] for b in infos) != sorted(names) or bad:
        sys.exit("%s: after the transaction: %r" % (mode, infos))
else:
    infos = c.ok("query-dirty-bitmaps")
    got = sorted(b["name"] for b in infos)
    if got != sorted(names):
        sys.exit("%s: expected bitmaps b0..b%d, found %s" % (mode, n - 1, got))
    counts = set(b["count"] for b in infos)
    bad = [b["name"] for b in infos if not b["recording"]]
    if bad or len(counts) != 1 or 0 in counts:
        sys.exit("%s: not every bitmap recorded the writes: %r"
                 % (mode, infos))
    print(counts.pop())
c.close()
