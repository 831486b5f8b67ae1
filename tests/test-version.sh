#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The filter reports the project's version: nbdkit --help names it
# (nbdkit 1.32's --version can only print nbdkit's own for a filter),
# and the control socket's greeting carries the same version.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

version="$(sed -n 's/^AC_INIT(\[nbdkit-dirtybitmap\], \[\([^]]*\)\]).*/\1/p' \
           "$abs_top_srcdir/configure.ac")"
[ -n "$version" ] || fail "no version in configure.ac"

nbdkit_filter memory --help > "$tmpdir/help" 2>&1 || {
  cat "$tmpdir/help" >&2
  fail "nbdkit --filter=... memory --help failed"
}
grep -qx "filter: dirtybitmap (nbdkit dirtybitmap filter $version)" \
     "$tmpdir/help" || {
  cat "$tmpdir/help" >&2
  fail "nbdkit --help does not give the filter's version $version"
}

sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
start_nbdkit_background "$sock" memory 1M \
  dirtybitmap-file="$tmpdir/sidecar.qcow2" dirtybitmap-control="$ctl"
wait_control
package="$(PYTHONPATH="$abs_top_srcdir/tests/helpers" /usr/bin/python3 -c '
import sys, qmp
print(qmp.Client(sys.argv[1], negotiate=False).greeting["QMP"]["version"]["package"])' "$ctl")"
[ "$package" = "nbdkit-dirtybitmap $version" ] ||
  fail "the QMP greeting says '$package', not 'nbdkit-dirtybitmap $version'"
