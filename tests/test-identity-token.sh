#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# For plugins without a file, dirtybitmap-data-id=TOKEN is recorded at
# each clean stop and compared at the next start: the same token is
# trusted, another token, or none after one was recorded, is stale
# (policy reset: all dirty, with the evidence).
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
sidecar="$tmpdir/token.qcow2"
run ()
{
  local err="$1"
  shift
  nbdkit_filter -U - memory $size dirtybitmap-file="$sidecar" dirtybitmap=b \
    dirtybitmap-in-use=reset "$@" \
    --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"t\" * 512, 65536)"' \
    2> "$tmpdir/$err" || { cat "$tmpdir/$err" >&2; fail "$err: failed"; }
}

run 1.err dirtybitmap-data-id=gen-1
run 2.err dirtybitmap-data-id=gen-1
if grep -q "written without this filter" "$tmpdir/2.err"; then
  cat "$tmpdir/2.err" >&2
  fail "the same token was called stale"
fi
assert_map "$sidecar" b "65536 65536"

run 3.err dirtybitmap-data-id=gen-2
grep -qF "dirtybitmap-data-id was 'gen-1', is now 'gen-2'" "$tmpdir/3.err" ||
  { cat "$tmpdir/3.err" >&2; fail "another token: no evidence"; }
assert_map "$sidecar" b "0 $size"

qemu-img bitmap --clear "$sidecar" b
run 4.err
grep -qF "the data was identified as a dirtybitmap-data-id token when the bitmaps were stored, and cannot be now" \
  "$tmpdir/4.err" || { cat "$tmpdir/4.err" >&2; fail "no token: no evidence"; }
assert_map "$sidecar" b "0 $size"
qemu_check "$sidecar"
