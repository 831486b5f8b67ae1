#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# nbdkit --help with the filter lists the filter and its three
# parameters.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

nbdkit_filter memory --help > "$tmpdir/help" 2>&1 || {
  cat "$tmpdir/help" >&2
  fail "nbdkit --filter=... memory --help failed"
}

grep -q "^filter: dirtybitmap (nbdkit dirtybitmap filter [0-9.]*)$" "$tmpdir/help" ||
  fail "--help does not name the filter"
for p in "dirtybitmap-file=<FILE>" "dirtybitmap=<NAME>" \
         "dirtybitmap-granularity=<SIZE>" "dirtybitmap-data=<FILE|DEVICE>" \
         "dirtybitmap-data-id=<STRING>"; do
  grep -qF -- "$p" "$tmpdir/help" || {
    cat "$tmpdir/help" >&2
    fail "--help does not list $p"
  }
done
grep -q "^dirtybitmap-file=<FILE> .*(required)" "$tmpdir/help" ||
  fail "--help does not say dirtybitmap-file= is required"
grep -q "^dirtybitmap-granularity=<SIZE> .*default 64K" "$tmpdir/help" ||
  fail "--help does not give the default granularity"
# The filter's help comes before the plugin's, which is still there.
grep -q "^plugin: memory" "$tmpdir/help" || fail "--help lost the plugin"
