#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Bad parameters are refused at start-up: nbdkit exits with status 1
# at once, printing the specific error, and leaves the sidecar alone
# (an existing one byte-identical, a missing one not created).
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

missing="$tmpdir/missing.qcow2"
missing2="$tmpdir/missing2.qcow2"

# Existing sidecars: one with only a disabled bitmap, one with an
# recording and a disabled bitmap; copies to compare with afterwards.
only_disabled="$tmpdir/only-disabled.qcow2"
qemu-img create -q -f qcow2 "$only_disabled" 1M
qemu-img bitmap --add "$only_disabled" off
qemu-img bitmap --disable "$only_disabled" off
mixed="$tmpdir/mixed.qcow2"
qemu-img create -q -f qcow2 "$mixed" 1M
qemu-img bitmap --add "$mixed" on
qemu-img bitmap --add "$mixed" off
qemu-img bitmap --disable "$mixed" off
cp "$only_disabled" "$tmpdir/only-disabled.orig"
cp "$mixed" "$tmpdir/mixed.orig"

n=0
# refused MESSAGE ARGS...: nbdkit with the filter over a 1M memory disk
# and ARGS must exit 1 (not time out) with MESSAGE on stderr.
refused ()
{
  local message="$1" status=0
  shift
  n=$((n + 1))
  timeout 20 nbdkit -f -U "$tmpdir/sock$n" --filter="$FILTER" \
    memory 1M "$@" > "$tmpdir/out$n" 2> "$tmpdir/err$n" || status=$?
  if [ $status -ne 1 ]; then
    cat "$tmpdir/err$n" >&2
    fail "case $n ($*): exit status $status, expected 1"
  fi
  if ! grep -qF -- "$message" "$tmpdir/err$n"; then
    cat "$tmpdir/err$n" >&2
    fail "case $n ($*): no '$message' in the error output"
  fi
  # Each case is exactly one error.
  [ "$(grep -c 'error:' "$tmpdir/err$n")" -eq 1 ] || {
    cat "$tmpdir/err$n" >&2
    fail "case $n ($*): expected exactly one error line"
  }
}
unchanged ()
{
  [ ! -e "$missing" ] || fail "case $n: $missing was created"
  [ ! -e "$missing2" ] || fail "case $n: $missing2 was created"
  cmp -s "$only_disabled" "$tmpdir/only-disabled.orig" ||
    fail "case $n: $only_disabled was modified"
  cmp -s "$mixed" "$tmpdir/mixed.orig" || fail "case $n: $mixed was modified"
}

refused "error: dirtybitmap-file=SIDECAR.qcow2 is required" \
  dirtybitmap=b
unchanged

refused "error: dirtybitmap-file= given twice: one sidecar per export" \
  dirtybitmap-file="$missing" dirtybitmap-file="$missing2" dirtybitmap=b
unchanged

refused "error: dirtybitmap-file= given twice" \
  dirtybitmap-file="$mixed" dirtybitmap-file="$mixed"
unchanged

for g in 3 1000 256; do
  refused "error: dirtybitmap-granularity=$g: must be a power of two from 512 to 2G" \
    dirtybitmap-file="$missing" dirtybitmap=b dirtybitmap-granularity=$g
  unchanged
done
refused "error: dirtybitmap-granularity=4294967296: must be a power of two from 512 to 2G" \
  dirtybitmap-file="$mixed" dirtybitmap=b dirtybitmap-granularity=4G
unchanged

for g in 1000 256 4G; do
  refused "error: dirtybitmap-crash-granularity=" \
    dirtybitmap-file="$missing" dirtybitmap=b dirtybitmap-crash-granularity=$g
  grep -qF "must be a power of two from 512 to 2G (for example 1M)" \
    "$tmpdir/err$n" || fail "case $n: no range given"
  unchanged
done

refused "error: could not decipher boolean (maybe)" \
  dirtybitmap-file="$missing" dirtybitmap=b dirtybitmap-crash-safe=maybe
unchanged

refused "error: dirtybitmap=nbdkit-dirtybitmap-journal: that name is reserved for the filter's crash-safety journal" \
  dirtybitmap-file="$mixed" dirtybitmap=nbdkit-dirtybitmap-journal
unchanged

long="$(printf 'n%.0s' $(seq 1024))"
[ ${#long} -eq 1024 ] || fail "test bug: name is ${#long} bytes"
refused "error: dirtybitmap=: bitmap name is 1024 bytes long; it must be 1 to 1023 bytes" \
  dirtybitmap-file="$missing" dirtybitmap="$long"
unchanged

refused "error: dirtybitmap=dup: bitmap named twice" \
  dirtybitmap-file="$mixed" dirtybitmap=dup dirtybitmap=other dirtybitmap=dup
unchanged

refused "error: $missing does not exist and no bitmap is named: add dirtybitmap=NAME" \
  dirtybitmap-file="$missing"
unchanged

refused "error: $only_disabled: no recording bitmap to record writes into" \
  dirtybitmap-file="$only_disabled"
grep -qF "name one with dirtybitmap=NAME" "$tmpdir/err$n" ||
  fail "case $n: the error does not tell to name a bitmap"
unchanged

refused "error: $mixed: bitmap 'off' is not recording; make it record writes with 'qemu-img bitmap --enable $mixed off', or do not name it" \
  dirtybitmap-file="$mixed" dirtybitmap=off
unchanged

refused "error: $only_disabled: bitmap 'off' is not recording" \
  dirtybitmap-file="$only_disabled" dirtybitmap=new dirtybitmap=off
unchanged

# The same sidecars are accepted with good parameters (so the cases
# above failed for the reason given, not for the sidecars).
nbdkit_filter -U - memory 1M dirtybitmap-file="$only_disabled" \
  dirtybitmap=new --run 'nbdinfo --size "$uri" >/dev/null'
[ "$(bitmap_flags "$only_disabled" new)" = "auto 65536" ] ||
  fail "good parameters: 'new' is '$(bitmap_flags "$only_disabled" new)'"
qemu_check "$only_disabled"
