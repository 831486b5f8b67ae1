# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark (tests/bench/run.sh): an nbdsh snippet (run with
# "python3 -m nbd -u URI -c", which provides the handle h) that zeroes
# the whole disk in 2 GiB NBD zero requests.
size = h.get_size()
step = 2 ** 31
off = 0
while off < size:
    n = min(step, size - off)
    h.zero(n, off)
    off += n
