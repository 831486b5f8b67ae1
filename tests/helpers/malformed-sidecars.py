#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Derive malformed variants of a valid sidecar for
# test-malformed-sidecars.sh.
#
# Usage: malformed-sidecars.py BASE OUTDIR
#
# BASE is a valid qcow2 sidecar (64 KiB clusters, 16-bit refcounts)
# holding three bitmaps: "b0" and "b1" with one allocated data cluster
# each, and a third one.  Every structure is found by parsing BASE (header,
# header extensions, bitmaps extension, refcount table and block,
# bitmap directory, bitmap tables), never by fixed offsets.  Each
# variant is a copy of BASE with a few bytes changed (or cut off), saved
# as OUTDIR/NAME.qcow2; for each one a line "NAME<TAB>FRAGMENT" is
# printed, FRAGMENT being text the filter's error must contain.
#
# Standard library only.

import os
import struct
import sys

EXT_END = 0x00000000
EXT_BITMAPS = 0x23852875
EXT_FEATURES = 0x6803f857

# Header field offsets (qcow2.txt, "Header").
H_MAGIC, H_VERSION, H_CLUSTER_BITS, H_SIZE = 0, 4, 20, 24
H_CRYPT, H_L1_SIZE, H_L1_OFFSET = 32, 36, 40
H_REFTABLE_OFFSET, H_REFTABLE_CLUSTERS = 48, 56
H_INCOMPAT, H_AUTOCLEAR, H_REFCOUNT_ORDER, H_HEADER_LENGTH = 72, 88, 96, 100

# Directory entry field offsets.
E_TABLE_OFFSET, E_TABLE_SIZE, E_FLAGS, E_TYPE = 0, 8, 12, 16
E_GRAN_BITS, E_NAME_SIZE, E_EXTRA_SIZE, E_NAME = 17, 18, 20, 24


def u8(b, o):
    return b[o]


def u16(b, o):
    return struct.unpack_from(">H", b, o)[0]


def u32(b, o):
    return struct.unpack_from(">I", b, o)[0]


def u64(b, o):
    return struct.unpack_from(">Q", b, o)[0]


def put8(b, o, v):
    b[o] = v


def put16(b, o, v):
    struct.pack_into(">H", b, o, v)


def put32(b, o, v):
    struct.pack_into(">I", b, o, v)


def put64(b, o, v):
    struct.pack_into(">Q", b, o, v)


def round_up(x, n):
    return (x + n - 1) // n * n


class Layout:
    """Where everything lives in the base sidecar."""

    def __init__(self, data):
        self.data = data
        if u32(data, H_MAGIC) != 0x514649FB or u32(data, H_VERSION) != 3:
            raise SystemExit("base: not a qcow2 v3 file")
        self.cluster_bits = u32(data, H_CLUSTER_BITS)
        self.cs = 1 << self.cluster_bits
        self.size = u64(data, H_SIZE)
        self.l1_size = u32(data, H_L1_SIZE)
        self.l1_offset = u64(data, H_L1_OFFSET)
        self.rt_offset = u64(data, H_REFTABLE_OFFSET)
        self.rt_clusters = u32(data, H_REFTABLE_CLUSTERS)
        self.refcount_order = u32(data, H_REFCOUNT_ORDER)
        self.header_length = u32(data, H_HEADER_LENGTH)
        if self.refcount_order != 4:
            raise SystemExit("base: refcount_order is not 4")

        # Header extensions: (type, length, offset of the type field).
        self.exts = []
        off = self.header_length
        while True:
            t, n = struct.unpack_from(">II", data, off)
            if t == EXT_END:
                self.ext_end = off          # offset of the end marker
                break
            self.exts.append((t, n, off))
            off += 8 + round_up(n, 8)
        bx = [e for e in self.exts if e[0] == EXT_BITMAPS]
        if len(bx) != 1 or bx[0][1] != 24:
            raise SystemExit("base: no valid bitmaps extension")
        self.bx = bx[0][2]                  # offset of its type field
        self.bx_data = self.bx + 8
        self.nb_bitmaps = u32(data, self.bx_data)
        self.dir_size = u64(data, self.bx_data + 8)
        self.dir_offset = u64(data, self.bx_data + 16)

        # Refcount table and its first block.
        self.rt_entries = [u64(data, self.rt_offset + 8 * i)
                           for i in range(self.rt_clusters * self.cs // 8)]
        self.refblock = self.rt_entries[0]
        if self.refblock == 0:
            raise SystemExit("base: no refcount block")

        # Bitmap directory.
        self.bitmaps = []
        off = self.dir_offset
        for _ in range(self.nb_bitmaps):
            ns = u16(data, off + E_NAME_SIZE)
            bm = {
                "entry": off,
                "table_offset": u64(data, off + E_TABLE_OFFSET),
                "table_size": u32(data, off + E_TABLE_SIZE),
                "flags": u32(data, off + E_FLAGS),
                "gran_bits": u8(data, off + E_GRAN_BITS),
                "name_size": ns,
                "name": data[off + E_NAME:off + E_NAME + ns].decode(),
            }
            bm["table"] = [u64(data, bm["table_offset"] + 8 * i)
                           for i in range(bm["table_size"])]
            self.bitmaps.append(bm)
            off += round_up(24 + ns, 8)
        if off - self.dir_offset != self.dir_size:
            raise SystemExit("base: directory size disagrees")

    def refcount_offset(self, offset):
        """Offset of the 16-bit refcount of the cluster at OFFSET."""
        cluster = offset // self.cs
        per_block = self.cs * 8 >> self.refcount_order
        if cluster >= per_block:
            raise SystemExit("base: cluster beyond the first refcount block")
        return self.refblock + 2 * cluster

    def bitmap(self, name):
        for bm in self.bitmaps:
            if bm["name"] == name:
                return bm
        raise SystemExit("base: no bitmap %s" % name)


def main():
    base_path, outdir = sys.argv[1], sys.argv[2]
    with open(base_path, "rb") as f:
        base = f.read()
    L = Layout(base)
    cs = L.cs
    b0, b1 = L.bitmap("b0"), L.bitmap("b1")
    last = L.bitmaps[-1]
    # What the variants below rely on.
    if len(L.bitmaps) != 3 or L.bitmaps[0] is not b0 or \
       L.bitmaps[1] is not b1:
        raise SystemExit("base: expected bitmaps b0, b1 and a third one")
    if b0["table"][0] == 0 or b1["table"][0] == 0:
        raise SystemExit("base: b0 and b1 need an allocated data cluster")
    if len(base) % cs != 0:
        raise SystemExit("base: file size is not a whole number of clusters")
    b0_data, b1_data = b0["table"][0], b1["table"][0]
    eof = len(base)                       # first cluster past the file
    fx = [e for e in L.exts if e[0] == EXT_FEATURES]
    if not fx:
        raise SystemExit("base: no feature name table extension")
    fx = fx[0]

    cases = []

    def variant(name, fragment, edit):
        buf = bytearray(base)
        r = edit(buf)
        if r is not None:
            buf = r
        if bytes(buf) == base:
            raise SystemExit("variant %s changes nothing" % name)
        with open(os.path.join(outdir, name + ".qcow2"), "wb") as f:
            f.write(buf)
        cases.append((name, fragment))

    def setter(put, off, val):
        def edit(buf):
            put(buf, off, val)
        return edit

    def truncate(n):
        return lambda buf: buf[:n]

    def move_to_eof(src, pointer_put, pointer_off, cut):
        """Copy the cluster at SRC to a new cluster at the end of the
        file, point POINTER_OFF at it, and cut the file CUT bytes into
        it: the structure is now the last one, and truncated."""
        def edit(buf):
            buf += base[src:src + cs]
            pointer_put(buf, pointer_off, eof)
            return buf[:eof + cut]
        return edit

    # Messages (from qcow2-format.c, sidecar.c, refcount.c, checked-io.c).
    def table_entry_msg(bm, index, raw):
        return ("bitmap '%s': table entry %d (0x%016x) has reserved bits "
                "set, or points to a cluster that is not aligned or lies "
                "outside the file" % (bm["name"], index, raw))

    def reftable_entry_msg(index, raw):
        return ("refcount table entry %d (0x%016x) has reserved bits set, "
                "or points to a refcount block that is not aligned or lies "
                "outside the file" % (index, raw))

    def reftable_msg(offset, clusters):
        return ("qcow2 header: refcount table (offset 0x%x, %d clusters) is "
                "not cluster aligned, empty, larger than 8 MiB or outside "
                "the file" % (offset, clusters))

    def l1_msg():
        return ("qcow2 header: L1 table (offset 0x%x, %d entries) is not "
                "cluster aligned, too large or outside the file"
                % (L.l1_offset, L.l1_size))

    def dir_offset_msg(offset):
        return ("bitmaps extension: bitmap_directory_offset 0x%x is not "
                "cluster aligned or the directory lies outside the file"
                % offset)

    def table_offset_msg(bm, offset):
        return ("bitmap '%s': bitmap_table_offset 0x%x is zero, not cluster "
                "aligned, or the table lies outside the file"
                % (bm["name"], offset))

    def overlap_msg(what, offset):
        return ("%s at offset 0x%x overlaps another structure in cluster "
                "0x%x; the sidecar is corrupt" % (what, offset, offset))

    def refcount0_msg(what, offset):
        return "%s at offset 0x%x lies in a cluster whose refcount is 0" % (
            what, offset)

    def dir_size_msg(size):
        return ("bitmaps extension: bitmap_directory_size %d cannot hold %d "
                "entries or exceeds 67107840" % (size, L.nb_bitmaps))

    # --- Truncated files -------------------------------------------------
    variant("trunc-empty", "not a qcow2 file (bad magic or shorter than a "
            "header)", truncate(0))
    variant("trunc-in-header", "not a qcow2 file (bad magic or shorter "
            "than a header)", truncate(60))
    # The file ends after the header, inside the header extensions: the
    # refcount table, checked with the header, is the first thing missing.
    variant("trunc-in-extensions", reftable_msg(L.rt_offset, L.rt_clusters),
            truncate((L.header_length + L.ext_end) // 2))
    variant("trunc-in-reftable", reftable_msg(L.rt_offset, L.rt_clusters),
            truncate(L.rt_offset + 8))
    # Cut inside the refcount block where it is: the L1 table, after it
    # and checked with the header, is reported first.
    variant("trunc-in-refblock", l1_msg(), truncate(L.refblock + 100))
    # The refcount block moved to the end of the file, then cut.
    variant("trunc-in-refblock-at-eof", reftable_entry_msg(0, eof),
            move_to_eof(L.refblock, put64, L.rt_offset, 100))
    variant("trunc-in-directory", dir_offset_msg(L.dir_offset),
            truncate(L.dir_offset + L.dir_size // 2))
    variant("trunc-before-directory", dir_offset_msg(L.dir_offset),
            truncate(L.dir_offset))
    variant("trunc-in-bitmap-table", table_offset_msg(b1, eof),
            move_to_eof(b1["table_offset"], put64,
                        b1["entry"] + E_TABLE_OFFSET, 4))
    variant("trunc-in-data-cluster", table_entry_msg(b0, 0, eof),
            move_to_eof(b0_data, put64, b0["table_offset"], cs // 2))

    # --- Header fields ---------------------------------------------------
    variant("header-magic", "not a qcow2 file (bad magic",
            setter(put32, H_MAGIC, 0x514649FA))
    variant("header-version-2", "qcow2 header: version 2 is not supported",
            setter(put32, H_VERSION, 2))
    variant("header-cluster-bits-8", "qcow2 header: cluster_bits 8 is "
            "outside 9..21", setter(put32, H_CLUSTER_BITS, 8))
    variant("header-cluster-bits-22", "qcow2 header: cluster_bits 22 is "
            "outside 9..21", setter(put32, H_CLUSTER_BITS, 22))
    variant("header-length-100", "qcow2 header: header_length 100 must be "
            "a multiple of 8 from 104 to the cluster size",
            setter(put32, H_HEADER_LENGTH, 100))
    variant("header-length-past-cluster", "qcow2 header: header_length "
            "%d must be a multiple of 8" % (cs + 8),
            setter(put32, H_HEADER_LENGTH, cs + 8))
    variant("header-crypt-method", "qcow2 header: crypt_method 1: "
            "encrypted sidecars are not supported",
            setter(put32, H_CRYPT, 1))
    variant("header-unknown-incompat", "qcow2 header: unknown incompatible "
            "feature bits 0x20",
            setter(put64, H_INCOMPAT, u64(base, H_INCOMPAT) | 0x20))
    variant("header-corrupt-bit", "qcow2 header: the corrupt bit is set",
            setter(put64, H_INCOMPAT, u64(base, H_INCOMPAT) | 0x2))
    variant("header-refcount-order-7", "qcow2 header: refcount_order 7 is "
            "above 6", setter(put32, H_REFCOUNT_ORDER, 7))
    variant("header-reftable-misaligned",
            reftable_msg(L.rt_offset + 512, L.rt_clusters),
            setter(put64, H_REFTABLE_OFFSET, L.rt_offset + 512))
    variant("header-reftable-outside", reftable_msg(eof, L.rt_clusters),
            setter(put64, H_REFTABLE_OFFSET, eof))
    variant("header-l1-size-0", "qcow2 header: l1_size 0 cannot map the "
            "virtual size of %d bytes" % L.size, setter(put32, H_L1_SIZE, 0))

    # --- Header extensions -----------------------------------------------
    variant("ext-length-past-cluster", "qcow2 header extension 0x%08x at "
            "offset %d: length %d runs past offset %d"
            % (fx[0], fx[2], cs - 16, cs),
            setter(put32, fx[2] + 4, cs - 16))

    def duplicate_bitmaps_ext(buf):
        buf[L.ext_end:L.ext_end + 32] = base[L.bx:L.bx + 32]
        put64(buf, L.ext_end + 32, 0)       # end marker
    variant("ext-bitmaps-twice", "qcow2 header: two bitmaps extensions",
            duplicate_bitmaps_ext)
    # Length 32: the 8 bytes after it (the end marker) become its data,
    # and the zeros after that a new end marker.
    variant("bitmaps-ext-length-32", "bitmaps extension: length 32 is not "
            "24", setter(put32, L.bx + 4, 32))
    variant("bitmaps-ext-reserved", "bitmaps extension: reserved field is "
            "not zero", setter(put32, L.bx_data + 4, 1))
    variant("bitmaps-ext-nb-0", "bitmaps extension: nb_bitmaps 0 is outside "
            "1..65535", setter(put32, L.bx_data, 0))
    variant("bitmaps-ext-nb-65536", "bitmaps extension: nb_bitmaps 65536 is "
            "outside 1..65535", setter(put32, L.bx_data, 65536))
    n = L.nb_bitmaps - 1
    variant("bitmaps-ext-nb-too-few", "bitmap directory: %d entries take %d "
            "bytes but bitmap_directory_size is %d; nb_bitmaps disagrees "
            "with the directory"
            % (n, L.bitmaps[n]["entry"] - L.dir_offset, L.dir_size),
            setter(put32, L.bx_data, n))
    n = L.nb_bitmaps + 1
    if n * 32 > L.dir_size:
        raise SystemExit("base: the directory is too small for the "
                         "nb-too-many case (use a longer name)")
    variant("bitmaps-ext-nb-too-many", "bitmap directory: entry %d of %d "
            "runs past the end of the directory (%d bytes); nb_bitmaps "
            "disagrees with the directory" % (n - 1, n, L.dir_size),
            setter(put32, L.bx_data, n))
    variant("bitmaps-ext-dir-misaligned", dir_offset_msg(L.dir_offset + 512),
            setter(put64, L.bx_data + 16, L.dir_offset + 512))
    variant("bitmaps-ext-dir-outside", dir_offset_msg(eof),
            setter(put64, L.bx_data + 16, eof))
    variant("bitmaps-ext-dir-size-small", dir_size_msg(L.dir_size // 2),
            setter(put64, L.bx_data + 8, L.dir_size // 2))
    variant("bitmaps-ext-dir-size-huge", dir_size_msg(1024 * 65535 + 8),
            setter(put64, L.bx_data + 8, 1024 * 65535 + 8))
    # At QEMU's limit, but far larger than the file.
    variant("bitmaps-ext-dir-size-max", dir_offset_msg(L.dir_offset),
            setter(put64, L.bx_data + 8, 1024 * 65535))

    def trailing_garbage(buf):
        put64(buf, L.bx_data + 8, L.dir_size + 8)
        end = L.dir_offset + L.dir_size
        buf[end:end + 8] = b"GARBAGE!"
    variant("dir-trailing-garbage", "bitmap directory: %d entries take %d "
            "bytes but bitmap_directory_size is %d; nb_bitmaps disagrees "
            "with the directory" % (L.nb_bitmaps, L.dir_size, L.dir_size + 8),
            trailing_garbage)

    # --- Directory entries -----------------------------------------------
    e0, e1, el = b0["entry"], b1["entry"], last["entry"]
    variant("entry-extra-data-size", "bitmap directory entry 0: "
            "extra_data_size 8 is not zero",
            setter(put32, e0 + E_EXTRA_SIZE, 8))
    variant("entry-name-size-0", "bitmap directory entry 0: name_size 0 is "
            "outside 1..1023 or runs past the directory",
            setter(put16, e0 + E_NAME_SIZE, 0))
    variant("entry-name-size-1024", "bitmap directory entry 0: name_size "
            "1024 is outside 1..1023",
            setter(put16, e0 + E_NAME_SIZE, 1024))
    big = last["name_size"] + 100
    variant("entry-name-past-directory", "bitmap directory entry %d: "
            "name_size %d is outside 1..1023 or runs past the directory"
            % (L.nb_bitmaps - 1, big), setter(put16, el + E_NAME_SIZE, big))
    variant("entry-type-2", "bitmap 'b0': type 2 is not 1",
            setter(put8, e0 + E_TYPE, 2))
    variant("entry-granularity-bits-8", "bitmap 'b0': granularity_bits 8 is "
            "outside 9..31", setter(put8, e0 + E_GRAN_BITS, 8))
    variant("entry-granularity-bits-32", "bitmap 'b0': granularity_bits 32 "
            "is outside 9..31", setter(put8, e0 + E_GRAN_BITS, 32))
    variant("entry-reserved-flag", "bitmap 'b0': flags 0x%x has reserved "
            "bits set" % (b0["flags"] | 8),
            setter(put32, e0 + E_FLAGS, b0["flags"] | 8))
    variant("entry-table-size-0", "bitmap 'b0': bitmap_table_size 0 is "
            "zero or beyond QEMU's limits",
            setter(put32, e0 + E_TABLE_SIZE, 0))
    variant("entry-table-size-huge", "bitmap 'b0': bitmap_table_size "
            "134217729 is zero or beyond QEMU's limits",
            setter(put32, e0 + E_TABLE_SIZE, 0x8000001))
    # Under 0x8000000 entries, but more than 512 MiB of bitmap data.
    variant("entry-table-size-over-512M", "bitmap 'b0': bitmap_table_size "
            "%d is zero or beyond QEMU's limits" % ((512 << 20) // cs + 1),
            setter(put32, e0 + E_TABLE_SIZE, (512 << 20) // cs + 1))
    variant("entry-table-offset-0", table_offset_msg(b0, 0),
            setter(put64, e0 + E_TABLE_OFFSET, 0))
    variant("entry-table-offset-misaligned",
            table_offset_msg(b0, b0["table_offset"] + 512),
            setter(put64, e0 + E_TABLE_OFFSET, b0["table_offset"] + 512))
    variant("entry-table-offset-outside", table_offset_msg(b0, eof),
            setter(put64, e0 + E_TABLE_OFFSET, eof))

    def rename_b1(name):
        def edit(buf):
            buf[e1 + E_NAME:e1 + E_NAME + 2] = name
        return edit
    if b1["name_size"] != 2:
        raise SystemExit("base: b1's name is not 2 bytes")
    variant("entry-duplicate-name", "bitmap directory: name 'b0' appears "
            "twice", rename_b1(b"b0"))
    variant("entry-nul-in-name", "bitmap directory entry 1: name contains "
            "a NUL byte", rename_b1(b"b\0"))
    if b0["flags"] & 1:
        raise SystemExit("base: b0 is in use")
    variant("entry-table-size-mismatch", "bitmap 'b0': bitmap_table_size %d "
            "does not match the virtual size (%d bytes needs %d entries)"
            % (b0["table_size"] + 1, L.size, b0["table_size"]),
            setter(put32, e0 + E_TABLE_SIZE, b0["table_size"] + 1))

    # --- Bitmap table entries (b0's first entry) -------------------------
    t0 = b0["table_offset"]
    for name, raw in [
            ("table-entry-reserved-low", b0_data | 0x2),
            ("table-entry-reserved-high", b0_data | (1 << 56)),
            ("table-entry-misaligned", b0_data + 512),
            ("table-entry-outside", eof),
            ("table-entry-all-ones-with-offset", b0_data | 1)]:
        variant(name, table_entry_msg(b0, 0, raw), setter(put64, t0, raw))

    # --- Overlapping clusters (b1: 4 KiB granularity, so the foreign
    # cluster's first 2 KiB are valid bitmap data) ------------------------
    t1 = b1["table_offset"]
    for name, target, what in [
            ("overlap-data-reftable", L.rt_offset, None),
            ("overlap-data-refblock", L.refblock, None),
            ("overlap-data-l1", L.l1_offset, None),
            ("overlap-data-directory", L.dir_offset, None),
            ("overlap-data-own-table", t1, None),
            ("overlap-data-other-bitmap", b0_data, None),
            ("overlap-table-other-table", b0["table_offset"],
             "the bitmap table of bitmap 'b1'")]:
        if what is None:
            variant(name, overlap_msg("a data cluster of bitmap 'b1'",
                                      target),
                    setter(put64, t1, target))
        else:
            variant(name, overlap_msg(what, target),
                    setter(put64, e1 + E_TABLE_OFFSET, target))

    # --- Refcounts -------------------------------------------------------
    variant("refcount-0-data-cluster",
            refcount0_msg("a data cluster of bitmap 'b0'", b0_data),
            setter(put16, L.refcount_offset(b0_data), 0))
    variant("refcount-0-bitmap-table",
            refcount0_msg("the bitmap table of bitmap '%s'" % last["name"],
                          last["table_offset"]),
            setter(put16, L.refcount_offset(last["table_offset"]), 0))
    variant("refcount-0-directory",
            refcount0_msg("the bitmap directory", L.dir_offset),
            setter(put16, L.refcount_offset(L.dir_offset), 0))
    variant("refcount-0-header",
            refcount0_msg("the header", 0),
            setter(put64, L.rt_offset, 0))
    variant("overlap-refblock-twice",
            "refcount table entry 1 points to the refcount block at 0x%x "
            "that another entry uses too" % L.refblock,
            setter(put64, L.rt_offset + 8, L.refblock))
    variant("overlap-l1-reftable",
            overlap_msg("the L1 table", L.rt_offset),
            setter(put64, H_L1_OFFSET, L.rt_offset))
    for name, raw in [
            ("reftable-entry-misaligned", L.refblock + 512),
            ("reftable-entry-outside", eof),
            ("reftable-entry-reserved", L.refblock | 1)]:
        variant(name, reftable_entry_msg(0, raw),
                setter(put64, L.rt_offset, raw))

    # --- Bitmap data -----------------------------------------------------
    for name, bm, data in [("data-bit-past-end-b0", b0, b0_data),
                           ("data-bit-past-end-b1", b1, b1_data)]:
        granules = -(-L.size // (1 << bm["gran_bits"]))
        if granules % 8 != 0 or granules // 8 >= cs:
            raise SystemExit("base: %s has no whole spare byte" % bm["name"])
        variant(name, "bitmap '%s': data cluster 0 at 0x%x has bits set past "
                "the end of the disk" % (bm["name"], data),
                setter(put8, data + granules // 8, 0x01))

    for name, fragment in cases:
        print("%s\t%s" % (name, fragment))


if __name__ == "__main__":
    main()
