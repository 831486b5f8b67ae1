#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The referee of the crash tests: is every request that must be
# recorded covered by the dirty bitmap, as QEMU reads it?
#
# A request must be covered if it reached the plugin before nbdkit
# died, acknowledged or not.  Two sources say which requests did:
#
#  - loadgen's logs (tests/helpers/loadgen.c): a request the server
#    acknowledged as done ("A ... ok") went through the filter.  One
#    that failed ("A ... err") may have failed before (nbdkit answers
#    ESHUTDOWN to requests it no longer passes down when it stops);
#
#  - optionally, the log of nbdkit's log filter stacked below the
#    dirtybitmap filter (--filter=dirtybitmap --filter=log): it writes
#    each Write/Zero/Trim line, in one write(2), before calling the
#    plugin, so the line is in the file even if nbdkit is killed while
#    the plugin runs.
#
# Requests still in flight when nbdkit died may not have reached the
# plugin, so they need not be covered (loadgen logs them "lost").
#
# The dirty ranges come from QEMU: qemu-nbd serves the sidecar's bitmap
# and nbdinfo --map reads it.  With --explained-by it also checks the
# converse, that the bitmap holds nothing no request touched (a bitmap
# all dirty would otherwise pass).
#
# Exit status: 0 when all is covered (and explained), 1 when not, 2
# when the input does not make sense (the plugin's log and loadgen's
# disagree, a malformed log, QEMU refusing the bitmap).

import argparse
import bisect
import collections
import json
import re
import subprocess
import sys

SHOW = 10       # uncovered requests printed in full

PLUGIN_LINE = re.compile(
    r" connection=(\d+) (Write|Zero|Trim) id=(\d+)"
    r" offset=0x([0-9a-f]+) count=0x([0-9a-f]+) ")


def die(msg):
    print("covered-check: " + msg, file=sys.stderr)
    sys.exit(2)


def read_loadgen(paths):
    """Requests keyed (log number, conn, id) -> [type, offset, length,
    result], the result None while unacknowledged."""
    reqs = {}
    for n, path in enumerate(paths):
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                words = line.split()
                where = "%s:%d" % (path, lineno)
                if len(words) == 6 and words[0] == "S" and \
                   words[3] in ("write", "zero", "trim"):
                    key = (n, int(words[1]), int(words[2]))
                    if key in reqs:
                        die("%s: request sent twice" % where)
                    reqs[key] = [words[3], int(words[4]), int(words[5]), None]
                elif (len(words) == 4 and words[0] == "A" and
                      words[3] in ("ok", "lost")) or \
                     (len(words) == 5 and words[0] == "A" and
                      words[3] == "err"):
                    key = (n, int(words[1]), int(words[2]))
                    if key not in reqs or reqs[key][3] is not None:
                        die("%s: completion of an unknown request" % where)
                    reqs[key][3] = words[3]
                else:
                    die("%s: malformed line: %r" % (where, line))
    return reqs


def read_plugin_log(path):
    """(type, offset, length) of every Write, Zero and Trim that
    entered the plugin."""
    seen = []
    with open(path) as f:
        for line in f:
            m = PLUGIN_LINE.search(line)
            if m:
                seen.append((m.group(2).lower(), int(m.group(4), 16),
                             int(m.group(5), 16)))
    return seen


def dirty_ranges(args):
    """Sorted, merged [start, end) dirty ranges of the bitmap."""
    if args.map:
        with open(args.map) as f:
            raw = [tuple(int(w) for w in line.split()) for line in f
                   if line.strip()]
    else:
        cmd = ["nbdinfo", "--map=qemu:dirty-bitmap:" + args.bitmap, "--json",
               "--", "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", args.bitmap,
               args.sidecar, "]"]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        if p.returncode != 0:
            die("QEMU cannot read bitmap '%s' of %s:\n%s" %
                (args.bitmap, args.sidecar, p.stderr.rstrip()))
        raw = [(e["offset"], e["length"]) for e in json.loads(p.stdout)
               if e["type"] & 1]
    return merge((off, off + length) for off, length in raw)


def covered(ranges, starts, off, length):
    """The first byte of [off, off + length) not in a dirty range, or
    None when all are."""
    i = bisect.bisect_right(starts, off) - 1
    if i < 0 or ranges[i][1] <= off:
        return off
    end = ranges[i][1]
    return None if end >= off + length else end


def merge(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def unexplained(ranges, reqs, unit, disk_end):
    """Dirty ranges that no sent request explains: [start, end) pieces
    outside every request rounded out to UNIT-aligned blocks."""
    allowed = merge((r[1] // unit * unit,
                     min(-(-(r[1] + r[2]) // unit) * unit, disk_end))
                    for r in reqs.values())
    starts = [a[0] for a in allowed]
    out = []
    for start, end in ranges:
        while start < end:
            i = bisect.bisect_right(starts, start) - 1
            if i >= 0 and allowed[i][1] > start:
                start = allowed[i][1]
                continue
            stop = starts[i + 1] if i + 1 < len(starts) else end
            out.append((start, min(stop, end)))
            start = min(stop, end)
    return out


def main():
    ap = argparse.ArgumentParser(
        description="Check that a dirty bitmap covers every request that "
        "reached the plugin.")
    ap.add_argument("--sidecar", required=True)
    ap.add_argument("--bitmap", required=True)
    ap.add_argument("--granularity", type=int, required=True)
    ap.add_argument("--size", type=int, required=True,
                    help="export size in bytes")
    ap.add_argument("--plugin-log",
                    help="log of nbdkit's log filter, below the dirtybitmap "
                    "filter")
    ap.add_argument("--explained-by", type=int, metavar="BYTES",
                    help="also check the converse: every dirty byte lies in "
                    "a BYTES-aligned block that some sent request touched")
    ap.add_argument("--map", help="read the dirty ranges (\"offset length\" "
                    "lines) from this file instead of asking QEMU")
    ap.add_argument("logs", nargs="+", metavar="LOADGEN_LOG")
    args = ap.parse_args()
    gran, size = args.granularity, args.size
    if gran <= 0 or gran & (gran - 1):
        die("granularity %d is not a power of two" % gran)

    reqs = read_loadgen(args.logs)
    for key, (typ, off, length, _) in reqs.items():
        if length <= 0 or off + length > size:
            die("request %s (%s %d %d) is outside the export" %
                (key, typ, off, length))
    results = collections.Counter(r[3] for r in reqs.values())
    acked = collections.Counter((r[0], r[1], r[2]) for r in reqs.values()
                                if r[3] in ("ok", "err"))
    acked_ok = collections.Counter((r[0], r[1], r[2]) for r in reqs.values()
                                   if r[3] == "ok")
    sent = collections.Counter((r[0], r[1], r[2]) for r in reqs.values())

    # Must cover: every request acknowledged as done, and every one the
    # plugin saw.  The same (type, offset, length) can be sent more than once,
    # so both sides are counted as multisets.
    must = collections.Counter(acked_ok)
    plugin_only = 0
    if args.plugin_log:
        plugin = collections.Counter(read_plugin_log(args.plugin_log))
        # Sanity: the plugin saw what loadgen sent, and every request the
        # server acknowledged as done went through the plugin.  If not,
        # the two logs do not describe the same run, or the log filter
        # is not where it must be.
        extra = plugin - sent
        if extra:
            die("the plugin log has %d requests loadgen never sent, e.g. %s" %
                (sum(extra.values()), next(iter(extra))))
        missing = acked_ok - plugin
        if missing:
            die("%d requests acknowledged as done are not in the plugin "
                "log, e.g. %s: is --filter=log below the dirtybitmap "
                "filter?" % (sum(missing.values()), next(iter(missing))))
        plugin_only = sum((plugin - acked_ok).values())
        must |= plugin

    ranges = dirty_ranges(args)
    disk_end = (size + 511) // 512 * 512   # QEMU's view: whole sectors
    for start, end in ranges:
        if start % gran or (end % gran and end != disk_end) or end > disk_end:
            die("dirty range [%d, %d) is not made of %d-byte granules of a "
                "%d-byte disk: wrong --granularity or --size?" %
                (start, end, gran, size))
    starts = [r[0] for r in ranges]

    # Each distinct range is checked once; the counts say how many
    # requests it stands for.
    where = {}
    for key, r in reqs.items():
        where.setdefault((r[0], r[1], r[2]), (key, r[3]))
    uncovered = []
    for req, count in sorted(must.items(), key=lambda kv: kv[0][1]):
        typ, off, length = req
        hole = covered(ranges, starts, off, length)
        if hole is not None:
            uncovered.append((req, count, hole))

    checked = sum(must.values())
    n_uncovered = sum(c for _, c, _ in uncovered)
    for (typ, off, length), count, hole in uncovered[:SHOW]:
        key, result = where[(typ, off, length)]
        granule = hole // gran * gran
        print("uncovered: %s offset %d length %d (log %s conn %d id %d, %s%s): "
              "granule [%d, %d) is clean" %
              (typ, off, length, args.logs[key[0]], key[1], key[2],
               {"ok": "acknowledged",
                "err": "seen by the plugin, failed"}.get(
                    result, "seen by the plugin, not acknowledged"),
               "" if count == 1 else ", sent %d times" % count,
               granule, min(granule + gran, disk_end)))
    if len(uncovered) > SHOW:
        print("uncovered: ... and %d more" % (len(uncovered) - SHOW))
    stray = []
    if args.explained_by:
        stray = unexplained(ranges, reqs, args.explained_by, disk_end)
        for start, end in stray[:SHOW]:
            print("dirty, but no request touched the %d-byte blocks of "
                  "[%d, %d)" % (args.explained_by, start, end))
        if len(stray) > SHOW:
            print("dirty, but no request touched: ... and %d more ranges" %
                  (len(stray) - SHOW))
    dirty = sum(end - start for start, end in ranges)
    print("%d requests checked, %d acknowledged, %d uncovered "
          "(%d sent, %d ok, %d err, %d lost%s; %d of %d bytes dirty)" %
          (checked, sum(acked.values()), n_uncovered, len(reqs),
           results["ok"], results["err"], results["lost"] + results[None],
           ", %d seen by the plugin only" % plugin_only
           if args.plugin_log else "", dirty, disk_end))
    if stray:
        print("%d dirty bytes that no request explains" %
              sum(end - start for start, end in stray))
    sys.exit(1 if uncovered or stray else 0)


if __name__ == "__main__":
    main()
