#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh).  Reads fio's per-job IOPS
# logs (argv[1:], one-second averages); prints the total write IOPS of
# the first second.
import sys
total = 0.0
for name in sys.argv[1:]:
    with open(name) as f:
        for line in f:
            fields = [x.strip() for x in line.split(",")]
            if len(fields) >= 3 and fields[2] == "1":
                total += float(fields[1])
                break
if total <= 0:
    sys.exit("no first-second IOPS in the fio logs")
print("%.1f" % total)
