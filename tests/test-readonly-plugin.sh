#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Nothing that cannot write through the filter creates or locks a
# sidecar: a plugin that cannot write (pattern), or a filter above this
# one that opens it read-only (cow).  A missing sidecar is not created;
# an existing one is byte-identical afterwards and, once a client has
# connected, holds none of QEMU's lock bytes; nbdkit exits 0.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp

sidecar="$tmpdir/sidecar.qcow2"
qemu-img create -q -f qcow2 "$sidecar" 1M
qemu-img bitmap --add "$sidecar" b
cp "$sidecar" "$tmpdir/sidecar.orig"

# The QEMU lock bytes someone holds on FILE, one per line.
held_locks ()
{
  /usr/bin/python3 - "$1" <<'EOF'
import fcntl, os, struct, sys
F_OFD_GETLK = 36
fmt = "hhxxxxqqixxxx"               # struct flock on x86_64 and arm64
fd = os.open(sys.argv[1], os.O_RDONLY)
for byte in (100, 101, 103, 200, 201, 203):
    probe = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
    if struct.unpack(fmt, fcntl.fcntl(fd, F_OFD_GETLK, probe))[0] != fcntl.F_UNLCK:
        print(byte)
EOF
}

# The probe sees the locks an nbdkit -r holds.
start_nbdkit_background "$tmpdir/r.sock" -r memory 1M \
  dirtybitmap-file="$sidecar"
[ -n "$(held_locks "$sidecar")" ] || fail "the lock probe sees no lock"
kill "$nbdkit_pid"
wait_nbdkit_exit

# A missing sidecar and a plugin that cannot write: not created.
missing="$tmpdir/missing.qcow2"
nbdkit_filter -U - pattern 1M dirtybitmap-file="$missing" dirtybitmap=b \
  --run "nbdinfo --size \"\$uri\" >/dev/null &&
         /usr/bin/python3 -m nbd -u \"\$uri\" -c 'assert h.is_read_only()'"
[ ! -e "$missing" ] || fail "pattern: $missing was created"
[ -z "$(ls -A "$tmpdir" | grep '^missing')" ] ||
  fail "pattern: files were left: $(ls -A "$tmpdir")"

# An existing sidecar: a client connects to each, then the sidecar is
# checked while nbdkit still runs, and after it stopped.  cow is named
# before the filter on the command line: it sits above it.
n=0
for stack in "--filter=$FILTER pattern 1M" \
             "--filter=cow --filter=$FILTER memory 1M"; do
  n=$((n + 1))
  sock="$tmpdir/s$n"
  # shellcheck disable=SC2086
  nbdkit -f -U "$sock" -P "$sock.pid" $stack dirtybitmap-file="$sidecar" \
    dirtybitmap=b 2> "$sock.err" &
  nbdkit_pid=$!
  cleanup_fn "kill -9 $nbdkit_pid 2>/dev/null"
  for (( i = 0; i < 100; i++ )); do
    [ -S "$sock" ] && [ -s "$sock.pid" ] && break
    sleep 0.1
  done
  [ -S "$sock" ] || { cat "$sock.err" >&2; fail "${stack#*$FILTER }: nbdkit did not start"; }
  /usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$sock" -c '
if not h.is_read_only():
    h.pwrite(b"x" * 512, 4096)      # cow keeps it above the filter
h.pread(512, 0)'
  locks="$(held_locks "$sidecar")"
  [ -z "$locks" ] || fail "${stack#*$FILTER }: lock bytes held while serving: $locks"
  cmp "$sidecar" "$tmpdir/sidecar.orig" ||
    fail "${stack#*$FILTER }: the sidecar changed while serving"
  kill "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] || {
    cat "$sock.err" >&2
    fail "${stack#*$FILTER }: nbdkit exited with status $status"
  }
  cmp "$sidecar" "$tmpdir/sidecar.orig" ||
    fail "${stack#*$FILTER }: the sidecar changed"
done
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "flags of 'b' are '$(bitmap_flags "$sidecar" b)'"
