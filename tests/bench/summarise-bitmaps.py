#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): summarises the bitmaps
# phase.  argv: results file (lines "round mode iops"), target ratio,
# bitmap count, how the bitmaps are made (BENCH_BITMAPS_ADD), summary
# file (appended to).
import statistics, sys
results, target, n, add, summary = sys.argv[1:6]
target = float(target)
runs, rounds, order = {}, {}, []
with open(results) as f:
    for line in f:
        r, mode, iops = line.split()
        if mode not in runs:
            runs[mode] = []
            order.append(mode)
        runs[mode].append(float(iops))
        rounds.setdefault(int(r), {})[mode] = float(iops)
for mode in order:
    v = runs[mode]
    m = statistics.median(v)
    print("%-12s median %10.1f IOPS  (min %.1f, max %.1f, spread %.1f%% of median, n=%d)"
          % (mode, m, min(v), max(v), (max(v) - min(v)) / m * 100, len(v)))
out = []
for safety in ("safe", "unsafe"):
    one, many = "bm1-" + safety, "bm%s-%s" % (n, safety)
    if one not in runs:
        continue
    ratio = statistics.median(runs[many]) / statistics.median(runs[one])
    per_round = [rounds[r][many] / rounds[r][one] for r in sorted(rounds)]
    best = max(runs[many]) / max(runs[one])
    line = ("%s/%s: ratio %.3f (medians %.0f / %.0f IOPS), per-round %s, "
            "best-run %.3f (target >= %.2f: %s)"
            % (many, one, ratio, statistics.median(runs[many]),
               statistics.median(runs[one]),
               " ".join("%.3f" % x for x in per_round), best, target,
               "met" if ratio >= target else "NOT met"))
    print(line)
    out.append("  " + line)
with open(summary, "a") as s:
    s.write("%s recording bitmaps vs 1 (%s; every region durable, all "
            "bitmaps checked to record):\n"
            % (n, "64K, dirtybitmap= parameters, persistent" if add == "params"
               else "64K, added over QMP, persistent=false"))
    for line in out:
        s.write(line + "\n")
