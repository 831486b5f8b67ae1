#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A 1 PiB export works with dirtybitmap-granularity=256K (2^32
# granules, exactly QEMU's 512 MiB bitmap limit): start-up, a few
# writes up to the last byte and the store are quick, the map is exact
# and the sidecar stays small on disk.  With the default 64K, or 128K,
# the export is refused with an error naming 262144.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout du cmp

sidecar="$tmpdir/sidecar.qcow2"
P=$((1 << 50))
T=$((1 << 40))

start=$(date +%s%N)
timeout 120 nbdkit -U - --filter="$FILTER" memory 1P \
  dirtybitmap-file="$sidecar" dirtybitmap=h dirtybitmap-granularity=256K \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c '
assert h.get_size() == $P
h.pwrite(b\"a\", 0)
h.zero(1048576, $T)
h.trim(100, $((512 * T + 1000)))
h.pwrite(b\"z\", $((P - 1)))
assert h.pread(1, $((P - 1))) == b\"z\"
h.flush()
'"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "$0: start-up, writes and store took $ms ms"
[ $ms -lt 10000 ] || fail "the 1P run took $ms ms"

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" h)" = "auto 262144" ] ||
  fail "flags of 'h' are '$(bitmap_flags "$sidecar" h)'"
kib=$(du -k "$sidecar" | cut -f1)
echo "$0: sidecar allocates $kib KiB"
[ "$kib" -lt 65536 ] || fail "the sidecar allocates $kib KiB"

# Granules 0, 2^22 to 2^22+3 (1 MiB at 1 TiB), 2^31 and 2^32-1.
assert_map "$sidecar" h "0 262144
1099511627776 1048576
562949953421312 262144
1125899906580480 262144"

# Too fine a granularity for 1P: refused at start-up, naming 256K.
cp "$sidecar" "$tmpdir/sidecar.orig"
n=0
for args in \
  "dirtybitmap-file=$tmpdir/missing.qcow2 dirtybitmap=h" \
  "dirtybitmap-file=$tmpdir/missing.qcow2 dirtybitmap=h dirtybitmap-granularity=128K" \
  "dirtybitmap-file=$sidecar dirtybitmap=h dirtybitmap=new"; do
  n=$((n + 1))
  status=0
  timeout 20 nbdkit -f -U "$tmpdir/sock$n" --filter="$FILTER" memory 1P \
    $args 2> "$tmpdir/err" || status=$?
  [ $status -eq 1 ] || {
    cat "$tmpdir/err" >&2
    fail "'$args': exit status $status, expected 1"
  }
  grep -qF "use dirtybitmap-granularity=262144 or larger" "$tmpdir/err" || {
    cat "$tmpdir/err" >&2
    fail "'$args': the error does not name dirtybitmap-granularity=262144"
  }
  grep -qF "for a disk of $P bytes" "$tmpdir/err" ||
    fail "'$args': the error does not give the disk size"
done
[ ! -e "$tmpdir/missing.qcow2" ] || fail "a refused start-up made a sidecar"
cmp "$sidecar" "$tmpdir/sidecar.orig" ||
  fail "a refused start-up changed the sidecar"

# Beyond 2 PiB a new sidecar with 64 KiB clusters cannot map the disk
# (QEMU's largest L1 table): refused at start-up, with the remedy.
status=0
timeout 20 nbdkit -f -U "$tmpdir/sock-4p" --filter="$FILTER" memory 4P \
  dirtybitmap-file="$tmpdir/missing.qcow2" dirtybitmap=h \
  dirtybitmap-granularity=1M 2> "$tmpdir/err" || status=$?
[ $status -eq 1 ] || fail "4P export: exit status $status, expected 1"
grep -qF "cannot describe a disk of $((4 * P)) bytes (at most 2 PiB)" \
  "$tmpdir/err" || fail "4P export: unexpected error: $(cat "$tmpdir/err")"
grep -qF "qemu-img create -f qcow2 -o cluster_size=2M" "$tmpdir/err" ||
  fail "4P export: the error gives no remedy"
[ ! -e "$tmpdir/missing.qcow2" ] || fail "a refused 4P start-up made a sidecar"
