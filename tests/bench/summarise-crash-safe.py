#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): summarises a crash-safe
# phase (steady or fresh).  argv: results file, phase, target (or "-"),
# disk size (or "-" for the 1G disk), summary file (appended to).
# Result lines: round mode iops iops1 commits pages waits touched_bytes
# ("-" where not known).
import statistics, sys
results, phase, target, disk, summary = sys.argv[1:6]
target = None if target == "-" else float(target)
GiB = 1024.0 ** 3
runs = {}
rounds = {}
order = []
with open(results) as f:
    for line in f:
        r, mode, iops, iops1, commits, pages, waits, touched = line.split()
        rec = {"iops": float(iops), "iops1": float(iops1),
               "commits": None if commits == "-" else int(commits),
               "pages": None if pages == "-" else int(pages),
               "waits": None if waits == "-" else int(waits),
               "touched": None if touched == "-" else int(touched)}
        if mode not in runs:
            runs[mode] = []
            order.append(mode)
        runs[mode].append(rec)
        rounds.setdefault(int(r), {})[mode] = rec

def med(mode, key):
    return statistics.median(x[key] for x in runs[mode])

base = "unsafe"
out = []
for mode in order:
    v = [x["iops"] for x in runs[mode]]
    m = statistics.median(v)
    print("%-10s median %10.1f IOPS  (min %.1f, max %.1f, spread %.1f%% of median, n=%d)"
          % (mode, m, min(v), max(v), (max(v) - min(v)) / m * 100, len(v)))
for mode in order:
    if mode == base:
        continue
    per_round = [rounds[r][mode]["iops"] / rounds[r][base]["iops"]
                 for r in sorted(rounds)]
    ratio = med(mode, "iops") / med(base, "iops")
    best = (max(x["iops"] for x in runs[mode])
            / max(x["iops"] for x in runs[base]))
    line = ("%s/%s: ratio %.3f (medians %.0f / %.0f IOPS), per-round %s, "
            "best-run %.3f"
            % (mode, base, ratio, med(mode, "iops"), med(base, "iops"),
               " ".join("%.3f" % x for x in per_round), best))
    if target is not None:
        line += " (target >= %.2f: %s)" % (target,
                                           "met" if ratio >= target else "NOT met")
    print(line)
    out.append("  " + line)
    if phase == "fresh":
        r1 = med(mode, "iops1") / med(base, "iops1")
        line = ("%s/%s first second: ratio %.3f (medians %.0f / %.0f IOPS)"
                % (mode, base, r1, med(mode, "iops1"), med(base, "iops1")))
        print(line)
        out.append("  " + line)
    c = [x for x in runs[mode] if x["commits"] is not None]
    if not c:
        line = "%s: no journal line in nbdkit's debug output" % mode
    elif phase == "fresh":
        per_gib = []
        assumed = False
        for x in c:
            t = x["touched"]
            if t is None:
                t, assumed = GiB, True
            per_gib.append(x["commits"] / (t / GiB))
        line = ("%s: %.0f fdatasync per GiB first written (median; runs: %s), "
                "%.1f GiB first written per run, %.0f pages written, "
                "%.0f requests waited per run (medians)%s"
                % (mode, statistics.median(per_gib),
                   " ".join("%.0f" % x for x in per_gib),
                   statistics.median((x["touched"] if x["touched"] is not None
                                      else GiB) / GiB for x in c),
                   statistics.median(x["pages"] for x in c),
                   statistics.median(x["waits"] for x in c),
                   " (regions not counted: whole disk assumed)" if assumed else ""))
    else:
        line = ("%s: %.0f fdatasync, %.0f requests waited per run (medians, "
                "all in the zero/prefill: every region is durable before the "
                "measured writes)"
                % (mode, statistics.median(x["commits"] for x in c),
                   statistics.median(x["waits"] for x in c)))
    print(line)
    out.append("  " + line)

with open(summary, "a") as s:
    if phase == "steady":
        if disk == "-":
            s.write("steady state, crash-safe vs not (whole disk written once "
                    "first, then 4K random writes):\n")
        else:
            s.write("steady state, crash-safe vs not, %s disk (all zeroed "
                    "and first 1G written first, then 4K random writes "
                    "in the first 1G):\n" % disk)
    else:
        s.write("fresh bitmap, crash-safe vs not (new sidecar, nothing "
                "durable, 4K random writes):\n")
    for line in out:
        s.write(line + "\n")
