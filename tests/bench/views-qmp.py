#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): the views phase's QMP
# steps, on the control socket.  argv: socket, directory of qmp.py
# (tests/helpers), step.  Step "add": add the view "bench" of the whole
# disk.  Step "scratch": print its scratch-bytes; it must be ok.
import sys
sock, helpers, step = sys.argv[1:4]
sys.path.insert(0, helpers)
import qmp
c = qmp.Client(sock)
if step == "add":
    c.ok("x-dirtybitmap-view-add", {"name": "bench"})
else:
    views = c.ok("x-dirtybitmap-query-views")
    if len(views) != 1 or views[0]["state"] != "ok":
        sys.exit("the view is not there, or broken: %r" % views)
    print(views[0]["scratch-bytes"])
c.close()
