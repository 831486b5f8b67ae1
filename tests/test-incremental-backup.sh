#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Incremental backup: a full copy of a disk is brought up to date by
# copying only the ranges the bitmap marks dirty after random writes,
# zeroes and trims through the file plugin; the result is identical to
# the disk, and much less than the whole disk was copied.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp dd head

disk="$tmpdir/disk.img"
backup="$tmpdir/backup.img"
sidecar="$tmpdir/sidecar.qcow2"
size=$((64 * 1024 * 1024))
gran=$((64 * 1024))
seed=20240611

head -c $size /dev/urandom > "$disk"
cp "$disk" "$backup"
cmp -s "$disk" "$backup" || fail "the full backup is not a copy"

# ~200 random requests; every one is logged as "offset length" in
# requests.log so the expected map can be computed independently.
cat > "$tmpdir/requests.py" <<EOF
import random
seed = $seed
size = $size
print("random seed", seed)
rng = random.Random(seed)
with open("$tmpdir/requests.log", "w") as log:
    for i in range(200):
        count = rng.randint(1, 300 * 1024)
        offset = rng.randint(0, size - count)
        kind = rng.choice(["write", "write", "zero", "trim"])
        if kind == "write":
            h.pwrite(rng.randbytes(count), offset)
        elif kind == "zero":
            h.zero(count, offset)
        else:
            h.trim(count, offset)
        log.write("%d %d\n" % (offset, count))
h.flush()
EOF
echo "$0: requests from Python random.Random($seed)"

nbdkit_filter -U - file "$disk" \
  dirtybitmap-file="$sidecar" dirtybitmap=inc \
  dirtybitmap-granularity=64K \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c \"\$(cat '$tmpdir/requests.py')\""

[ "$(wc -l < "$tmpdir/requests.log")" -eq 200 ] ||
  fail "the request script did not log 200 requests"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" inc)" = "auto 65536" ] ||
  fail "flags of 'inc' are '$(bitmap_flags "$sidecar" inc)'"
if cmp -s "$disk" "$backup"; then
  fail "the requests did not change the disk"
fi

dirty_map "$sidecar" inc > "$tmpdir/dirty"
expected_map $gran $size < "$tmpdir/requests.log" > "$tmpdir/expected"
if ! cmp -s "$tmpdir/dirty" "$tmpdir/expected"; then
  diff "$tmpdir/expected" "$tmpdir/dirty" >&2 || :
  fail "dirty map differs from the map of the logged requests"
fi

dirty_bytes="$(awk '{ n += $2 } END { print n + 0 }' "$tmpdir/dirty")"
echo "$0: $(wc -l < "$tmpdir/dirty") dirty ranges, $dirty_bytes of $size bytes"
[ "$dirty_bytes" -gt 0 ] || fail "nothing is dirty"
[ "$dirty_bytes" -lt $size ] ||
  fail "the whole disk is dirty ($dirty_bytes bytes): not incremental"

# The incremental backup: copy only the dirty ranges.
while read -r off len; do
  dd if="$disk" of="$backup" bs=1M iflag=skip_bytes,count_bytes \
     oflag=seek_bytes conv=notrunc skip="$off" seek="$off" count="$len" \
     status=none
done < "$tmpdir/dirty"

cmp "$disk" "$backup" ||
  fail "the backup differs from the disk after copying the dirty ranges"
