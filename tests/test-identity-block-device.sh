#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A block device (a loop device made here) is identified by its device
# number, the kernel's write and discard counters and the boot id: a
# clean run after a clean run is not stale, a write to the device
# without the filter is (policy reset: all dirty, with the evidence).
# Needs root to make a loop device: skipped otherwise, except in CI.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires losetup dd truncate

size=$((16 * 1024 * 1024))
backing="$tmpdir/backing.img" sidecar="$tmpdir/dev.qcow2"
truncate -s $size "$backing"
if ! dev="$(losetup -f --show "$backing" 2> "$tmpdir/losetup.err")"; then
  cat "$tmpdir/losetup.err" >&2
  if [ "${CI:-}" = "true" ]; then
    fail "cannot make a loop device (CI must run this test as root)"
  fi
  echo "$0: SKIP: cannot make a loop device (needs root)" >&2
  exit 77
fi
cleanup_fn losetup -d "$dev"
args=(file "$dev" dirtybitmap-file="$sidecar" dirtybitmap=b
      dirtybitmap-in-use=reset)

no_alarm ()
{
  if grep -q "written without this filter" "$1"; then
    cat "$1" >&2
    fail "$2: called stale"
  fi
}

nbdkit_filter -U - "${args[@]}" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"a\" * 512, 65536)"' \
  2> "$tmpdir/1.err"
no_alarm "$tmpdir/1.err" "the first run"
nbdkit_filter -U - "${args[@]}" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"b\" * 512, 3 * 65536)"' \
  2> "$tmpdir/2.err"
no_alarm "$tmpdir/2.err" "the second run"
assert_map "$sidecar" b "$(printf '65536 512\n196608 512\n' |
                           expected_map 65536 $size)"

# One byte written to the device, past the filter.
printf z | dd of="$dev" bs=1 seek=$((size / 2)) conv=notrunc,fsync status=none
nbdkit_filter -U - "${args[@]}" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.flush()"' 2> "$tmpdir/3.err"
grep -qF "(the data may have been written without this filter: its write I/Os counter was" \
  "$tmpdir/3.err" || { cat "$tmpdir/3.err" >&2; fail "no evidence"; }
assert_map "$sidecar" b "0 $size"
qemu_check "$sidecar"
