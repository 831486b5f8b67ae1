#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A crash in the middle of a commit can leave clusters counted that
# nothing references (QEMU's stores have the same window).  When every
# reference in the sidecar is known (no snapshot, no guest data), the
# first writer's commit gives them back, so the sidecar passes
# "qemu-img check" with no leak; with guest data present it does not
# touch them (qemu-img check -r leaks remains the remedy).
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires qemu-io

# Count one more cluster, just past the end of the file, as used.
leak_one_cluster ()
{
  /usr/bin/python3 - "$1" <<'PY'
import os, struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    h = f.read(104)
    cluster_bits = struct.unpack(">I", h[20:24])[0]
    reftable = struct.unpack(">Q", h[48:56])[0]
    order = struct.unpack(">I", h[96:100])[0]
    assert order == 4, "the test expects 16-bit refcounts"
    cs = 1 << cluster_bits
    leaked = (os.path.getsize(path) + cs - 1) // cs
    per_block = cs * 8 >> order
    f.seek(reftable + 8 * (leaked // per_block))
    block = struct.unpack(">Q", f.read(8))[0]
    assert block, "no refcount block covers the cluster"
    f.seek(block + 2 * (leaked % per_block))
    f.write(struct.pack(">H", 1))
    f.truncate((leaked + 1) * cs)
PY
}

leaks ()
{
  qemu-img check --output=json "$1" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get("leaks", 0))'
}

for guest_data in no yes; do
  sidecar="$tmpdir/sidecar-$guest_data.qcow2"
  qemu-img create -q -f qcow2 "$sidecar" 16M
  qemu-img bitmap --add "$sidecar" b0
  [ $guest_data = no ] || qemu-io -c 'write 0 64k' "$sidecar" >/dev/null
  leak_one_cluster "$sidecar"
  [ "$(leaks "$sidecar")" = 1 ] || fail "set-up: $(leaks "$sidecar") leaks"
  nbdkit_filter -U - memory 16M dirtybitmap-file="$sidecar" \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"x\", 0)"'
  expected=$([ $guest_data = no ] && echo 0 || echo 1)
  [ "$(leaks "$sidecar")" = $expected ] ||
    fail "guest data $guest_data: $(leaks "$sidecar") leaks, expected $expected"
  assert_map "$sidecar" b0 "0 65536"
done
