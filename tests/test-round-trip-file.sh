#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Writes, zeroes and trims through the file plugin are recorded in a
# new sidecar, reach the file itself, leave the bitmap in use while
# nbdkit runs, and are stored consistent at exit with exactly the
# touched granules dirty.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires truncate cmp dd

disk="$tmpdir/disk.img"
sidecar="$tmpdir/sidecar.qcow2"
size=$((64 * 1024 * 1024))
truncate -s $size "$disk"
# Non-zero data under the range that will be zeroed, so that the zero
# request visibly reaches the file.
printf 'Z%.0s' $(seq 1 8192) | dd of="$disk" bs=1 seek=10485760 conv=notrunc status=none

# Run inside --run, after the client wrote: the flags QEMU sees while
# nbdkit still holds the sidecar.
cat > "$tmpdir/client.sh" <<EOF
set -e
$(declare -f bitmap_flags)
/usr/bin/python3 -m nbd -u "\$1" -c '
h.pwrite(b"x" * 4096, 1048576)
h.pwrite(b"y" * 10, 33554430)
h.zero(196608, 10485760)
h.trim(100, 52428800)
assert h.pread(4096, 1048576) == b"x" * 4096
h.flush()
'
bitmap_flags -U "$sidecar" b0 > "$tmpdir/running-flags"
EOF

nbdkit_filter -U - file "$disk" \
  dirtybitmap-file="$sidecar" dirtybitmap=b0 \
  --run "bash '$tmpdir/client.sh' \"\$uri\""

# While running: in use and recording.
[ "$(cat "$tmpdir/running-flags")" = "in-use,auto 65536" ] ||
  fail "flags while nbdkit ran were '$(cat "$tmpdir/running-flags")'"

# The data reached the file.
[ "$(stat -c %s "$disk")" -eq $size ] || fail "file size changed"
cmp -s <(dd if="$disk" bs=4096 skip=256 count=1 status=none) \
       <(printf 'x%.0s' $(seq 1 4096)) ||
  fail "the 4096 bytes written at 1 MiB are not in the file"
cmp -s <(dd if="$disk" bs=1 skip=33554430 count=10 status=none) \
       <(printf 'yyyyyyyyyy') ||
  fail "the 10 bytes written at 32 MiB - 2 are not in the file"
cmp -s <(dd if="$disk" bs=65536 skip=160 count=3 status=none) \
       <(head -c 196608 /dev/zero) ||
  fail "the zeroed range is not zero in the file"

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b0)" = "auto 65536" ] ||
  fail "stored bitmap flags are '$(bitmap_flags "$sidecar" b0)'"
assert_map "$sidecar" b0 "1048576 65536
10485760 196608
33488896 131072
52428800 65536"
