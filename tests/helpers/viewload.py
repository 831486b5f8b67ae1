# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A logged write load and the checker of point-in-time views, for the
# view tests (/usr/bin/python3, libnbd's nbd module).
#
# The disk (an nbdkit memory disk: a trim reads back as zeroes) starts
# filled with a known pattern.  Writer threads, one connection each,
# write, zero and trim random ranges; every 512-byte sector a write
# puts down is stamped with the write's id and the sector's number, so
# that a view's content names the write it came from.  Writer K owns
# the stripes K, K+N, K+2N, ... of STRIPE bytes and its requests stay
# inside one of its stripes: requests of one writer are ordered (one in
# flight at a time), those of different writers never overlap, but a
# stripe is not a multiple of the views' granules, so writers share
# granules.
#
# Each request is logged with the time it was sent and the time it was
# acknowledged.  Load.instant(fn) notes the time before and after fn
# (the QMP command that adds a view).  For a view added at that
# instant, each writer's requests are then: acknowledged before the
# command was sent (in the view), sent after its reply (not in it), or
# in flight in between; those in flight must make a prefix of the
# writer's remaining requests, each wholly in or wholly out.
# check_view() finds that prefix from the view's own content and
# compares every byte of the view with the disk it implies.
import errno
import random
import struct
import threading
import time

import nbd

SECTOR = 512
STRIPE = 96 * 1024
MAX_READ = 4 << 20
now = time.monotonic


def sector_stamp(request_id, sector):
    """The content of SECTOR (a sector number) as written by request
    REQUEST_ID (0: the initial pattern)."""
    return struct.pack("<QQ", request_id, sector) * (SECTOR // 16)


def stamped(request_id, offset, length):
    return b"".join(sector_stamp(request_id, s)
                    for s in range(offset // SECTOR,
                                   (offset + length) // SECTOR))


def describe(data, offset):
    """Which request wrote the sector at OFFSET of DATA, for messages."""
    sector = data[offset - offset % SECTOR:][:SECTOR]
    if sector == bytes(len(sector)):
        return "zeroes"
    rid, number = struct.unpack("<QQ", sector[:16])
    return "request %#x (sector %d)" % (rid, number)


def initial_disk(size):
    return bytearray(stamped(0, 0, size))


def fill(h, size):
    """Write the initial pattern to the disk on handle H."""
    for offset in range(0, size, MAX_READ):
        length = min(MAX_READ, size - offset)
        h.pwrite(stamped(0, offset, length), offset)


def read_ranges(h, ranges):
    """The content of RANGES ([(offset, length)...]) read on handle H, as
    one bytes object per range."""
    out = []
    for offset, length in ranges:
        parts = [h.pread(min(MAX_READ, offset + length - o), o)
                 for o in range(offset, offset + length, MAX_READ)]
        out.append(b"".join(parts))
    return out


class Request:
    __slots__ = ("rid", "kind", "offset", "length", "sent", "acked")

    def __init__(self, rid, kind, offset, length):
        self.rid, self.kind = rid, kind
        self.offset, self.length = offset, length
        self.sent = self.acked = None

    def apply(self, disk, base=0):
        """Apply the request to DISK, a bytearray starting at BASE."""
        start = self.offset - base
        if self.kind == "write":
            disk[start:start + self.length] = \
                stamped(self.rid, self.offset, self.length)
        else:                           # zero, trim: the memory disk reads 0
            disk[start:start + self.length] = bytes(self.length)

    def __repr__(self):
        return "%s %#x [%d, %d)" % (self.kind, self.rid, self.offset,
                                    self.offset + self.length)


class Instant:
    """The times before and after the command that made a view."""

    def __init__(self, sent, replied):
        self.sent, self.replied = sent, replied


class Load:
    def __init__(self, uri, size, writers=4, seed=1, pause=0.0, region=None):
        """Writers on URI, a disk of SIZE bytes, write its first REGION
        bytes (default all), pausing PAUSE seconds between requests."""
        self.uri, self.size, self.writers = uri, size, writers
        self.seed, self.pause = seed, pause
        self.logs = [[] for _ in range(writers)]
        self.errors = []
        self.stop = threading.Event()
        self.threads = []
        self.stripes = ((region or size) + STRIPE - 1) // STRIPE

    def _writer(self, k):
        try:
            rng = random.Random(self.seed * 1000 + k)
            h = nbd.NBD()
            h.connect_uri(self.uri)
            own = list(range(k, self.stripes, self.writers))
            region_end = self.stripes * STRIPE
            seq = 0
            while not self.stop.is_set():
                seq += 1
                stripe = rng.choice(own) * STRIPE
                end = min(stripe + STRIPE, self.size, region_end)
                first = rng.randrange(stripe, end, SECTOR)
                length = rng.randrange(SECTOR, end - first + 1, SECTOR)
                kind = rng.choices(("write", "zero", "trim"), (6, 2, 2))[0]
                r = Request((k + 1) << 32 | seq, kind, first, length)
                data = stamped(r.rid, first, length) \
                    if kind == "write" else None
                r.sent = now()
                if kind == "write":
                    h.pwrite(data, first)
                elif kind == "zero":
                    h.zero(length, first)
                else:
                    h.trim(length, first)
                r.acked = now()
                self.logs[k].append(r)
                if self.pause:
                    time.sleep(self.pause)
            h.shutdown()
        except Exception as e:
            self.errors.append("writer %d: %r" % (k, e))

    def start(self):
        for k in range(self.writers):
            t = threading.Thread(target=self._writer, args=(k,))
            t.start()
            self.threads.append(t)

    def finish(self):
        """Stop the writers; raise if one failed."""
        self.stop.set()
        for t in self.threads:
            t.join()
        if self.errors:
            raise AssertionError("\n".join(self.errors))

    def last_range(self, rng):
        """A range some writer wrote lately (for reads that race it)."""
        log = self.logs[rng.randrange(self.writers)]
        if not log:
            return None
        r = log[-1]
        return r.offset, r.length

    def instant(self, command):
        """Run COMMAND (the QMP request that adds a view); return its
        Instant and COMMAND's result."""
        sent = now()
        result = command()
        return Instant(sent, now()), result

    def requests_at(self, instant):
        """For each writer: (requests surely in, requests in flight)."""
        out = []
        for log in self.logs:
            done = 0
            while done < len(log) and log[done].acked < instant.sent:
                done += 1
            last = done
            while last < len(log) and log[last].sent < instant.replied:
                last += 1
            out.append((log[:done], log[done:last]))
        return out


def covered(ranges, offset, length):
    """The parts of [OFFSET, OFFSET+LENGTH) inside RANGES."""
    for o, l in ranges:
        lo, hi = max(o, offset), min(o + l, offset + length)
        if lo < hi:
            yield lo, hi - lo


def _settle(disk, pending, view, ranges):
    """Apply to DISK the prefix of PENDING (one writer's requests in
    flight at the instant) that the view shows (view(offset, length) ->
    its bytes there); return the prefix's length, or raise with what the
    view shows of each request.  Sector by sector: only the sectors a
    request touches change when the prefix grows by it."""
    if not pending:
        return 0

    def sectors(r):
        for o, l in covered(ranges, r.offset, r.length):
            yield from range(o // SECTOR, (o + l) // SECTOR)

    shown, state = {}, {}
    for r in pending:
        for s in sectors(r):
            if s not in shown:
                shown[s] = view(s * SECTOR, SECTOR)
                state[s] = bytes(disk[s * SECTOR:(s + 1) * SECTOR])
    wrong = {s for s in shown if state[s] != shown[s]}
    for j in range(len(pending) + 1):
        if not wrong:
            for r in pending[:j]:
                r.apply(disk)
            return j
        if j == len(pending):
            break
        r = pending[j]
        for s in sectors(r):
            state[s] = sector_stamp(r.rid, s) if r.kind == "write" \
                else bytes(SECTOR)
            if state[s] == shown[s]:
                wrong.discard(s)
            else:
                wrong.add(s)
    lines = ["requests in flight at the instant, not a prefix wholly in:"]
    for r in pending:
        lines.append("  %r: the view shows %s" % (r, ", ".join(
            sorted(set(describe(shown[s], 0).split(" (")[0]
                       for s in sectors(r)))) or
            "(outside the frozen ranges)"))
    raise AssertionError("\n".join(lines))


def expected_view(load, instant, ranges, view):
    """The disk at INSTANT as the log says, the in-flight requests
    settled against VIEW (view(offset, length) -> bytes of the view)."""
    disk = initial_disk(load.size)
    flights = 0
    for done, pending in load.requests_at(instant):
        for r in done:
            r.apply(disk)
        _settle(disk, pending, view, ranges)
        flights += len(pending)
    return disk, flights


def compare(name, expected, offset, data):
    """Raise at the first byte where DATA (read at OFFSET) differs."""
    if expected[offset:offset + len(data)] == data:
        return
    for i in range(0, len(data), SECTOR):
        if expected[offset + i:offset + i + SECTOR] != data[i:i + SECTOR]:
            at = offset + i
            raise AssertionError(
                "view %s differs at offset %d: it holds %s, the disk at its "
                "instant held %s" % (name, at, describe(data, i),
                                     describe(expected, at)))


def check_view(load, name, instant, ranges, content, reads=()):
    """Check a view: CONTENT (one bytes per range of RANGES, read after
    the load) and READS ([(offset, data)], read while the load ran) must
    be the disk at INSTANT.  Returns the requests in flight."""
    pieces = list(zip(ranges, content))

    def view(offset, length):
        for (o, l), data in pieces:
            if o <= offset and offset + length <= o + l:
                return data[offset - o:offset - o + length]
        raise AssertionError("no content for [%d, %d)" % (offset,
                                                          offset + length))

    disk, flights = expected_view(load, instant, ranges, view)
    for (o, _), data in pieces:
        compare(name, disk, o, data)
    for o, data in reads:
        compare(name + " (read while writing)", disk, o, data)
    return flights


def read_error(h, offset, length):
    """The errno of a read that must fail."""
    try:
        h.pread(length, offset)
    except nbd.Error as e:
        return e.errnum
    return 0


EPERM = errno.EPERM
