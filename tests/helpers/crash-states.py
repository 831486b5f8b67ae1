#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The replayer of the crash-state tests: from a file's initial
# contents and the record of one run (tests/helpers/powerloss.c,
# POWERLOSS_RECORD), the contents the file may legally hold after a
# power failure at the end of the record.
#
# The model (a disk with a volatile cache, as SQLite's crash tests,
# ALICE and CrashMonkey assume):
#  - everything up to the last sync (fsync, fdatasync) that returned
#    success is durable: the *base*;
#  - of the changes issued since (the *pending* ones), any subset
#    reached the disk, in any order: order matters only where two
#    changes overlap, so only those orders are enumerated;
#  - the last change to land may be torn at a 512-byte boundary: a
#    prefix or a suffix of its sectors landed, the rest is old.  A
#    sector is never torn.  Only cuts that give different contents
#    count (between two sectors the write really changes);
#  - the file's size is metadata: a write past the end takes its size
#    change with it when it lands, and when torn the size is taken as
#    landed (the harsher case: the sectors that did not land read as
#    zeros); a pending ftruncate is one more change of the subset,
#    ordered against every other change (it overlaps them all), and
#    bytes it cut off read as zeros if the file grows again.
#  - sync_file_range is no barrier; fallocate is not modelled (the
#    filter never calls it): the record is refused.
#
# A state is named by a spec: the pending changes applied, by call
# number, in the order applied ("-" for none), and optionally
# "~pOFFSET" or "~sOFFSET": the last one torn at file offset OFFSET,
# its prefix (p) or its suffix (s) landed.  E.g. "41,44~p4096".
#
# Usage:
#   crash-states.py info RECORD
#       one line per successful sync: "CALL PENDING HEADER", PENDING
#       the changes issued since the previous one (a crash at CALL,
#       the sync not made, leaves them pending), HEADER 1 if one of
#       them writes the header area (the first 4 KiB), else 0
#   crash-states.py states INITIAL RECORD DIR [--max N] [--seed S]
#                   [--only SPEC]
#       enumerates the distinct states (exhaustively when at most
#       --exhaustive-limit changes are pending, else --samples random
#       ones), prints "states D exhaustive|sampled pending P" first,
#       then picks at most N of them (seeded) and writes each to
#       DIR/state-I, printing "I SPEC"; DIR/base is the base.
#   crash-states.py replay INITIAL RECORD OUT
#       applies every change of the record in order (no crash): the
#       file as the run left it, to check the record itself.

import argparse
import itertools
import random
import sys

SECTOR = 512
TEAR_CUTS = 8           # cut points tried per torn write, at most
MAX_ORDERS = 24         # orders tried per group of overlapping changes
WRITES = ("pwrite", "pwrite64", "pwritev", "pwritev64", "write", "writev")
TRUNCATES = ("ftruncate", "ftruncate64")
SYNCS = ("fsync", "fdatasync")


def die(msg):
    print("crash-states: " + msg, file=sys.stderr)
    sys.exit(2)


class Change:
    """A pending write (data at offset) or ftruncate (size).  WHOLE
    holds the write's sectors that it covers entirely, which do not
    depend on what they overwrite."""

    def __init__(self, call, offset, data=None, size=None):
        self.call, self.offset, self.data, self.size = call, offset, data, size
        self.whole = {}
        if data is not None:
            first = (offset + SECTOR - 1) // SECTOR
            for i in range(first, (offset + len(data)) // SECTOR):
                a = i * SECTOR - offset
                self.whole[i] = data[a:a + SECTOR]

    def end(self):
        return self.offset + len(self.data)

    def overlaps(self, other):
        if self.data is None or other.data is None:
            return True
        return self.offset < other.end() and other.offset < self.end()


def read_record(path):
    """The calls of a record: (call, what, offset, length, result,
    size, data) tuples; and the call that crashed, or None."""
    calls, crash = [], None
    with open(path, "rb") as f:
        while True:
            line = f.readline()
            if not line:
                break
            fields = line.split()
            if fields[0] == b"crash":
                crash = int(fields[1])
                continue
            if len(fields) != 7:
                die("%s: malformed line %r" % (path, line))
            call, what = int(fields[0]), fields[1].decode()
            fileno, offset, length, result, size = map(int, fields[2:])
            if fileno != 0:
                die("%s: more than one file followed" % path)
            data = None
            if what in WRITES and result > 0:
                data = f.read(result)
                if len(data) != result or f.read(1) != b"\n":
                    die("%s: call %d: truncated data" % (path, call))
            calls.append((call, what, offset, length, result, size, data))
    return calls, crash


class File:
    """A file's contents: a base, and sectors changed over it."""

    def __init__(self, base):
        self.base = base
        self.size = len(base)
        self.zero_from = len(base)   # base bytes from here read as 0
        self.sectors = {}

    def copy(self):
        f = File(self.base)
        f.size, f.zero_from = self.size, self.zero_from
        f.sectors = dict(self.sectors)
        return f

    def sector(self, i):
        if i in self.sectors:
            return self.sectors[i]
        start = i * SECTOR
        b = self.base[start:min(start + SECTOR, self.zero_from)]
        return b + bytes(SECTOR - len(b))

    def merged(self, i, offset, data):
        """Sector I once DATA is written at OFFSET."""
        s0, end = i * SECTOR, offset + len(data)
        a, b = max(offset, s0), min(end, s0 + SECTOR)
        old = self.sector(i)
        return old[:a - s0] + data[a - offset:b - offset] + old[b - s0:]

    def write(self, change, landed=None):
        """Write CHANGE; with LANDED (a range of file offsets), only
        its sectors that start inside it land."""
        offset, data = change.offset, change.data
        end = offset + len(data)
        first, last = offset // SECTOR, (end + SECTOR - 1) // SECTOR
        if landed:
            first = max(first, (landed[0] + SECTOR - 1) // SECTOR)
            last = min(last, (landed[1] + SECTOR - 1) // SECTOR)
        for i in (first, last - 1):
            if first <= i < last and i not in change.whole:
                self.sectors[i] = self.merged(i, offset, data)
        if landed:
            self.sectors.update((i, s) for i, s in change.whole.items()
                                if first <= i < last)
        else:
            self.sectors.update(change.whole)
        self.size = max(self.size, end)

    def truncate(self, size):
        if size < self.size:
            self.zero_from = min(self.zero_from, size)
            for i in [i for i in self.sectors if i * SECTOR >= size]:
                del self.sectors[i]
            i = size // SECTOR
            if i in self.sectors:
                s = self.sectors[i]
                self.sectors[i] = s[:size % SECTOR] + bytes(SECTOR - size % SECTOR)
        self.size = size

    def apply(self, change, landed=None):
        if change.data is None:
            self.truncate(change.size)
        else:
            self.write(change, landed)

    def changed_sectors(self, change):
        """The sectors CHANGE would change, applied now."""
        return [i for i in range(change.offset // SECTOR,
                                 (change.end() + SECTOR - 1) // SECTOR)
                if self.merged(i, change.offset, change.data)
                != self.sector(i)]

    def key(self):
        """Equal for equal contents (sectors equal to the base's are
        left out)."""
        zero_from = min(self.zero_from, self.size)
        base = File(self.base)
        return (self.size, zero_from,
                frozenset((i, s) for i, s in self.sectors.items()
                          if i * SECTOR < self.size and
                          not (i * SECTOR + SECTOR <= zero_from and
                               s == base.sector(i))))

    def contents(self):
        out = bytearray(self.base[:min(self.zero_from, self.size)])
        out.extend(bytes(self.size - len(out)))
        for i, s in self.sectors.items():
            start = i * SECTOR
            if start < self.size:
                out[start:start + SECTOR] = s[:self.size - start]
        return bytes(out[:self.size])


def split(calls, initial):
    """The base File and the pending Changes at the end of CALLS."""
    last_sync = 0
    for call, what, _, _, result, _, _ in calls:
        if what in SYNCS and result == 0:
            last_sync = call
    base = File(initial)
    pending = []
    for call, what, offset, length, result, size, data in calls:
        if what.startswith("fallocate") or what.startswith("posix_fallocate"):
            die("call %d: %s is not modelled" % (call, what))
        if what in WRITES and data:
            change = Change(call, offset, data=data)
        elif what in TRUNCATES and result == 0:
            change = Change(call, offset, size=offset)
        else:
            continue
        if call < last_sync:
            base.apply(change)
        else:
            pending.append(change)
    return File(base.contents()), pending


def tears(f, change, rng=None):
    """The ways CHANGE may land torn on F: (offset, 'p'|'s') cuts."""
    if change.data is None:
        return []
    changed = f.changed_sectors(change)
    cuts = [i * SECTOR for i in changed[1:]]
    if rng is None and len(cuts) > TEAR_CUTS:
        step = (len(cuts) - 5) / (TEAR_CUTS - 5 + 1)
        cuts = (cuts[:3] + [cuts[3 + int(step * (k + 1))]
                            for k in range(TEAR_CUTS - 5)] + cuts[-2:])
    out = [(c, side) for c in cuts for side in "ps"]
    if change.end() > f.size:
        # The size alone lands: no sector of the write does.
        out.append((change.offset // SECTOR * SECTOR, "p"))
    if rng is not None:
        return [rng.choice(out)] if out else []
    return out


def landed_range(change, cut, side):
    return (change.offset - SECTOR, cut) if side == "p" \
        else (cut, change.end() + SECTOR)


def groups(changes):
    """CHANGES split into groups that overlap, in call order."""
    out = []
    for c in changes:
        hit = [g for g in out if any(c.overlaps(o) for o in g)]
        merged = [c]
        for g in hit:
            merged = g + merged
            out.remove(g)
        out.append(sorted(merged, key=lambda x: x.call))
    return out


def orders(group, rng=None):
    if rng is not None:
        g = list(group)
        rng.shuffle(g)
        return [g]
    return list(itertools.islice(itertools.permutations(group), MAX_ORDERS))


def build(base, order, tear):
    f = base.copy()
    for n, c in enumerate(order):
        if tear and n == len(order) - 1:
            f.apply(c, landed_range(c, *tear))
        else:
            f.apply(c)
    return f


def spec_of(order, tear):
    s = ",".join(str(c.call) for c in order) or "-"
    if tear:
        s += "~%s%d" % (tear[1], tear[0])
    return s


def states_of(base, subset, rng=None):
    """(spec, File) of the states with exactly SUBSET landed."""
    gs = groups(subset)
    for combo in itertools.product(*[orders(g, rng) for g in gs]):
        # The groups are independent: each may be the one that ends
        # with the torn write.
        for last in range(len(combo) + 1):
            seq = [c for k, g in enumerate(combo) if k != last for c in g]
            if last < len(combo):
                seq += list(combo[last])
            if last == len(combo) or not combo:
                yield spec_of(seq, None), build(base, seq, None)
                continue
            before = build(base, seq[:-1], None)
            for tear in tears(before, seq[-1], rng):
                yield spec_of(seq, tear), build(base, seq, tear)


def enumerate_states(base, pending):
    seen = {}
    for n in range(len(pending) + 1):
        for subset in itertools.combinations(pending, n):
            for spec, f in states_of(base, list(subset)):
                seen.setdefault(f.key(), (spec, f))
    return list(seen.values())


def sample_states(base, pending, count, rng):
    seen = {}
    for _ in range(count * 4):
        subset = [c for c in pending if rng.random() < 0.5]
        for spec, f in states_of(base, subset, rng):
            if rng.random() < 0.5 or spec.find("~") < 0:
                seen.setdefault(f.key(), (spec, f))
                break
        if len(seen) >= count:
            break
    return list(seen.values())


def parse_spec(spec, pending):
    by_call = {c.call: c for c in pending}
    tear = None
    if "~" in spec:
        spec, t = spec.split("~")
        tear = (int(t[1:]), t[0])
    try:
        order = [by_call[int(x)] for x in spec.split(",")] if spec != "-" else []
    except (KeyError, ValueError):
        die("spec %r names a change that is not pending" % spec)
    return order, tear


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["info", "states", "replay"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--max", type=int, default=1 << 30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only")
    ap.add_argument("--exhaustive-limit", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2000)
    a = ap.parse_args()

    if a.command == "info":
        calls, _ = read_record(a.args[0])
        pending, header = 0, 0
        for call, what, offset, _, result, _, data in calls:
            if what in SYNCS and result == 0:
                print(call, pending, header)
                pending, header = 0, 0
            elif data or what in TRUNCATES:
                pending += 1
                header |= data is not None and offset < 4096
        return

    initial = open(a.args[0], "rb").read()
    calls, crash = read_record(a.args[1])
    if a.command == "replay":
        f = File(initial)
        for call, what, offset, length, result, size, data in calls:
            if what in WRITES and data:
                f.apply(Change(call, offset, data=data))
            elif what in TRUNCATES and result == 0:
                f.apply(Change(call, offset, size=offset))
            if (what in WRITES or what in TRUNCATES) and f.size != size:
                die("call %d: replayed size %d, recorded %d"
                    % (call, f.size, size))
        open(a.args[2], "wb").write(f.contents())
        return

    out = a.args[2]
    base, pending = split(calls, initial)
    open(out + "/base", "wb").write(base.contents())
    rng = random.Random(a.seed)
    if a.only:
        order, tear = parse_spec(a.only, pending)
        chosen = [(a.only, build(base, order, tear))]
        print("states 1 chosen pending %d" % len(pending))
    else:
        if len(pending) <= a.exhaustive_limit:
            states, how = enumerate_states(base, pending), "exhaustive"
        else:
            states, how = sample_states(base, pending, a.samples, rng), "sampled"
        print("states %d %s pending %d" % (len(states), how, len(pending)))
        chosen = states if len(states) <= a.max else rng.sample(states, a.max)
    for n, (spec, f) in enumerate(chosen, 1):
        open("%s/state-%d" % (out, n), "wb").write(f.contents())
        print(n, spec)


if __name__ == "__main__":
    main()
