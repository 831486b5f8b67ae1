#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Small qcow2 header editor for the tests: reads or changes the fields
# and extensions the tests need, leaving every other byte alone.
#
#   header-edit.py FILE get FIELD            print a header field
#   header-edit.py FILE set FIELD VALUE      overwrite a header field
#   header-edit.py FILE exts                 print "TYPE LENGTH HEXDATA" lines
#   header-edit.py FILE add-ext TYPE TEXT    insert an extension before the end
#   header-edit.py FILE flip-ext TYPE INDEX  invert one byte of an extension
import struct
import sys

FIELDS = {                       # name: (offset, struct format)
    "crypt_method": (32, ">I"),
    "incompatible_features": (72, ">Q"),
    "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"),
    "header_length": (100, ">I"),
}


def extensions(cluster0):
    off = struct.unpack(">I", cluster0[100:104])[0]
    while True:
        typ, length = struct.unpack(">II", cluster0[off:off + 8])
        yield off, typ, length, cluster0[off + 8:off + 8 + length]
        if typ == 0:
            return
        off += 8 + ((length + 7) & ~7)


def main():
    path, cmd = sys.argv[1], sys.argv[2]
    with open(path, "r+b") as f:
        cluster0 = bytearray(f.read(65536))
        if cmd == "get":
            off, fmt = FIELDS[sys.argv[3]]
            print(struct.unpack(fmt, cluster0[off:off + struct.calcsize(fmt)])[0])
        elif cmd == "set":
            off, fmt = FIELDS[sys.argv[3]]
            f.seek(off)
            f.write(struct.pack(fmt, int(sys.argv[4], 0)))
        elif cmd == "exts":
            for _, typ, length, data in extensions(cluster0):
                if typ:
                    print("%08x %d %s" % (typ, length, data.hex()))
        elif cmd == "add-ext":
            typ, text = int(sys.argv[3], 16), sys.argv[4].encode()
            end = [off for off, t, _, _ in extensions(cluster0) if t == 0][0]
            ext = struct.pack(">II", typ, len(text)) + text
            ext += b"\0" * (-len(ext) % 8)
            f.seek(end)
            f.write(ext + struct.pack(">II", 0, 0))
        elif cmd == "flip-ext":
            typ, index = int(sys.argv[3], 16), int(sys.argv[4])
            off = [o for o, t, _, _ in extensions(cluster0) if t == typ][0]
            f.seek(off + 8 + index)
            f.write(bytes([cluster0[off + 8 + index] ^ 0xff]))
        else:
            sys.exit("unknown command " + cmd)


main()
