#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A grown or shrunk export.  By default nbdkit refuses it with an error
# that gives the exact qemu-img resize command, which works; with
# dirtybitmap-resize=adopt the filter resizes the sidecar itself, as
# qemu-img resize would (same size, same bitmaps, qemu-img check
# clean), except that the area added is dirty in every bitmap; a
# shrink drops the tail.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

sidecar="$tmpdir/sidecar.qcow2"
mib=$((1024 * 1024))

# A 1 MiB disk's sidecar: 'b' (64K, recording) written at 4096,
# 'fine' (512 bytes, recording) and 'off' (disabled) empty.
nbdkit_filter -U - memory $mib dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"x\", 4096)'"
qemu-img bitmap --add -g 512 "$sidecar" fine
qemu-img bitmap --add --disable "$sidecar" off
qemu_check "$sidecar"
cp "$sidecar" "$tmpdir/sidecar.orig"

# Refused by default, with the command that keeps the bitmaps.
for size in $((3 * mib)) $((mib / 2)); do
  status=0
  timeout 20 nbdkit -f -U "$tmpdir/sock$size" --filter="$FILTER" memory $size \
    dirtybitmap-file="$sidecar" 2> "$tmpdir/err" || status=$?
  [ $status -eq 1 ] || fail "$size bytes: exit status $status"
  shrink=
  [ $size -gt $mib ] || shrink=" --shrink"
  for text in \
      "error: $sidecar: the sidecar's virtual size is $mib bytes but the export is $size bytes" \
      "Only the size differs" \
      "'qemu-img resize$shrink $sidecar $size'" \
      "dirtybitmap-resize=adopt"; do
    grep -qF -- "$text" "$tmpdir/err" || {
      cat "$tmpdir/err" >&2
      fail "$size bytes: the error does not say: $text"
    }
  done
  cmp "$sidecar" "$tmpdir/sidecar.orig" ||
    fail "$size bytes: the refusal changed the sidecar"
done

# The command as the error gives it keeps the bitmaps, and nbdkit then
# starts: this is the reference for adopt.
cp "$sidecar" "$tmpdir/qemu.qcow2"
qemu-img resize -q "$tmpdir/qemu.qcow2" $((3 * mib))
nbdkit_filter -U - memory $((3 * mib)) dirtybitmap-file="$tmpdir/qemu.qcow2" \
  --run 'nbdinfo --size "$uri" >/dev/null'
qemu_check "$tmpdir/qemu.qcow2"

# Sizes and bitmaps (name, flags, granularity) as qemu-img info shows.
layout ()
{
  qemu-img info --output=json "$1" | /usr/bin/python3 -c '
import json, sys
info = json.load(sys.stdin)
print(info["virtual-size"])
for b in info["format-specific"]["data"].get("bitmaps", []):
    print(b["name"], ",".join(b["flags"]), b["granularity"])'
}

# Adopt a grown export: a client writes at 2.5 MiB.
nbdkit_filter -U - memory $((3 * mib)) dirtybitmap-file="$sidecar" \
  dirtybitmap-resize=adopt \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"y\", 2621440)'" \
  2> "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "adopt (grow) failed"; }
grep -qF "warning: $sidecar: the export is $((3 * mib)) bytes, the sidecar was $mib: it is resized to $((3 * mib)) bytes (dirtybitmap-resize=adopt), and the area added is dirty in every bitmap" \
  "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "adopt (grow): no warning"; }
qemu_check "$sidecar"
[ "$(layout "$sidecar")" = "$(layout "$tmpdir/qemu.qcow2")" ] || {
  layout "$sidecar" >&2
  layout "$tmpdir/qemu.qcow2" >&2
  fail "adopt (grow): not the layout qemu-img resize makes"
}
assert_map "$sidecar" b "0 65536
$mib $((2 * mib))"
assert_map "$sidecar" fine "$mib $((2 * mib))"
assert_map "$sidecar" off "$mib $((2 * mib))"
# What qemu-img resize made: the added area clean.
assert_map "$tmpdir/qemu.qcow2" b "0 65536"

# Adopt a shrunk export: the tail goes, the rest stays.
nbdkit_filter -U - memory $((mib / 2)) dirtybitmap-file="$sidecar" \
  dirtybitmap-resize=adopt --run 'nbdinfo --size "$uri" >/dev/null' \
  2> "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "adopt (shrink) failed"; }
qemu_check "$sidecar"
[ "$(layout "$sidecar" | head -n 1)" = $((mib / 2)) ] ||
  fail "adopt (shrink): virtual size $(layout "$sidecar" | head -n 1)"
assert_map "$sidecar" b "0 65536"
assert_map "$sidecar" fine ""
assert_map "$sidecar" off ""
