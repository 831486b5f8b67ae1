#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): exits 0 if the sidecar
# described by "qemu-img info --output=json" (argv[1]) holds the bitmap
# named argv[2], else fails naming the bitmaps it holds.
import json, sys
info = json.load(open(sys.argv[1]))
name = sys.argv[2]
names = [b["name"] for b in
         info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]
sys.exit(0 if name in names else "bitmap %s missing, found %r" % (name, names))
