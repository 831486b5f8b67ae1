#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh).  Reads fio's JSON output
# (argv[1]); prints the bytes written by every job.
import json, sys
with open(sys.argv[1]) as f:
    text = f.read()
doc = json.loads(text[text.index("{"):])
print(sum(job["write"]["io_bytes"] for job in doc["jobs"]))
