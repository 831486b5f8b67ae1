#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh).  Reads fio's JSON output
# (argv[1]); prints the total write IOPS.
import json, sys
with open(sys.argv[1]) as f:
    text = f.read()
# Be tolerant of anything fio prints before the JSON object.
doc = json.loads(text[text.index("{"):])
jobs = doc["jobs"]
if not jobs:
    sys.exit("no jobs in fio output")
for job in jobs:
    if job.get("error", 0) != 0:
        sys.exit("fio job %s reported error %s" % (job.get("jobname"),
                                                   job["error"]))
iops = sum(job["write"]["iops"] for job in jobs)
if iops <= 0:
    sys.exit("fio measured no writes")
print("%.1f" % iops)
