#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The demonstration: track a few writes to an in-memory disk, stop
# cleanly, then show the sidecar as QEMU sees it and the dirty map as a
# backup tool would read it.  Needs no disk and no configuration.
set -euo pipefail
export PATH="/usr/bin:/usr/sbin:$PATH"   # Debian's python3 has libnbd

here="$(cd "$(dirname "$0")/.." && pwd)"
installed="$(pkg-config --variable=filterdir nbdkit)/nbdkit-dirtybitmap-filter.so"
if [ -f "$installed" ]; then
  filter=dirtybitmap
else
  filter="$here/filter/.libs/nbdkit-dirtybitmap-filter.so"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sidecar="$work/disk.bitmaps.qcow2"

echo "== nbdkit --filter=$filter memory 1G dirtybitmap-file=$sidecar dirtybitmap=backup1"
echo "== writing 4K at 1M, zeroing 192K at 10M, trimming 100 bytes at 512M"
nbdkit -U - --filter="$filter" memory 1G \
  dirtybitmap-file="$sidecar" dirtybitmap=backup1 \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "
h.pwrite(b\"demo\" * 1024, 1048576)
h.zero(196608, 10485760)
h.trim(100, 536870912)
"'

echo
echo "== qemu-img info $sidecar"
qemu-img info "$sidecar"
echo
echo "== qemu-img check"
qemu-img check "$sidecar"
echo
echo "== nbdinfo --map=qemu:dirty-bitmap:backup1 -- [ qemu-nbd -r -f qcow2 -B backup1 SIDECAR ]"
nbdinfo --map=qemu:dirty-bitmap:backup1 -- \
  [ qemu-nbd -r -f qcow2 -B backup1 "$sidecar" ]
