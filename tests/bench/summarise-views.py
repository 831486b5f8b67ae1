#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): summarises the views
# phase.  argv: results file (lines "round mode iops iops-first-second
# bytes-written scratch-bytes"), target ratio (f-copied / f-none),
# summary file (appended to).
import statistics, sys
results, target, summary = sys.argv[1], float(sys.argv[2]), sys.argv[3]
runs, order, rounds = {}, [], {}
with open(results) as f:
    for line in f:
        r, mode, iops, first, written, scratch = line.split()
        rounds.setdefault(int(r), {})[mode] = float(iops)
        if mode not in runs:
            runs[mode] = []
            order.append(mode)
        runs[mode].append((float(iops), float(first), int(written),
                           int(scratch)))


def median(mode, i=0):
    return statistics.median(r[i] for r in runs[mode])


for mode in order:
    v = [r[0] for r in runs[mode]]
    m = statistics.median(v)
    print("%-9s median %10.1f IOPS, first second %10.1f  (min %.1f, max "
          "%.1f, n=%d)" % (mode, m, median(mode, 1), min(v), max(v), len(v)))
out = []
for peer in ("f", "q"):
    none = peer + "-none"
    if none not in runs:
        continue
    for case in ("new", "copied"):
        mode = "%s-%s" % (peer, case)
        if mode not in runs:
            continue
        ratio = median(mode) / median(none)
        line = "%s/%s: %.3f (first second %.3f; per round %s)" % (
            mode, none, ratio, median(mode, 1) / median(none, 1),
            " ".join("%.3f" % (rounds[r][mode] / rounds[r][none])
                     for r in sorted(rounds)))
        if mode == "f-copied":
            line += " (target >= %.2f: %s)" % (
                target, "met" if ratio >= target else "NOT met")
        out.append(line)
    new = runs.get(peer + "-new")
    if not new:
        continue
    per_gib = statistics.median(s / (w / 2**30) for _, _, w, s in new)
    out.append("%s-new: %.0f scratch bytes per GiB written (%.2f GiB; "
               "a 1G disk copies 1 GiB at most)" % (
                   peer, per_gib, per_gib / 2**30))
if "q-none" in runs:
    for case in ("none", "new", "copied"):
        if "f-" + case not in runs:
            continue
        out.append("filter/qemu-storage-daemon, %s: %.3f" % (
            case, median("f-" + case) / median("q-" + case)))
for line in out:
    print(line)
with open(summary, "a") as s:
    s.write("views (4K random writes over a 1G raw file; f: the filter, "
            "q: qemu-storage-daemon's copy-before-write):\n")
    for line in out:
        s.write("  " + line + "\n")
