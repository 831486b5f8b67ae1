#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): prints the CPUs this
# process may use split in two halves, "FIRST SECOND" (comma-separated
# lists, for taskset -c), or nothing with fewer than 2 CPUs.
import os
c = sorted(os.sched_getaffinity(0))
h = len(c) // 2
if h:
    print(",".join(map(str, c[:h])), ",".join(map(str, c[h:])))
