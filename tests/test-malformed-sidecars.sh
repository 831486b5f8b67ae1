#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Malformed sidecars are refused at start-up: for each variant of a
# valid sidecar (truncated inside each structure, every header and
# bitmaps-extension field out of range, broken directory entries,
# bitmap and refcount table entries, overlapping clusters, clusters
# with refcount 0, bits past the end of the disk) nbdkit exits 1 at
# once, with an error naming the sidecar and the faulty field, and
# leaves the file byte-identical.
#
# The variants are derived by tests/helpers/malformed-sidecars.py,
# which parses a sidecar made by qemu-img and the filter and prints, for
# each variant, the text the error must contain.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp date

generator="$abs_top_srcdir/tests/helpers/malformed-sidecars.py"
# The filter makes dirtybitmap-file= absolute against its working
# directory: give it absolute paths so the messages can be matched.
dir="$(cd "$tmpdir" && pwd)"
base="$dir/base.qcow2"
size=64M

# A valid sidecar: b0 (64K granularity) and b1 (4K) with a data cluster
# each, and a disabled third bitmap with a longer name.
qemu-img create -q -f qcow2 "$base" $size
qemu-img bitmap --add "$base" b0
nbdkit_filter -U - memory $size dirtybitmap-file="$base" \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c '
h.pwrite(b\"x\" * 4096, 0)
h.pwrite(b\"y\", 40000000)
h.zero(3 * 65536, 1 << 20)'"
qemu-img bitmap --add -g 4K "$base" b1
qemu-img bitmap --add --disable -g 1M "$base" \
  b2-a-disabled-bitmap-with-a-longer-name
nbdkit_filter -U - memory $size dirtybitmap-file="$base" \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"z\" * 512, 8 << 20)'"
qemu_check "$base"
[ "$(bitmap_flags "$base" b1)" = "auto 4096" ] ||
  fail "b1 flags are '$(bitmap_flags "$base" b1)'"

# The base itself is accepted by the same start-up checks (so each
# variant's refusal comes from its own fault), and left untouched.
cp "$base" "$dir/control.qcow2"
status=0
nbdkit -U - --filter="$FILTER" memory $size \
  dirtybitmap-file="$dir/control.qcow2" --run true \
  > "$dir/out" 2> "$dir/err" || status=$?
if [ $status -ne 0 ] || grep -q "error" "$dir/err"; then
  cat "$dir/err" >&2
  fail "the valid base sidecar is refused (exit status $status)"
fi
cmp "$base" "$dir/control.qcow2" || fail "the control run changed the base"

mkdir "$dir/variants"
/usr/bin/python3 "$generator" "$base" "$dir/variants" > "$dir/manifest" ||
  fail "$generator failed"

n=0
failures=()
while IFS=$'\t' read -r name expected; do
  n=$((n + 1))
  variant="$dir/variants/$name.qcow2"
  cp "$variant" "$dir/pristine.qcow2"
  status=0
  start=$(date +%s%N)
  timeout 10 nbdkit -f -U "$dir/sock$n" --filter="$FILTER" memory $size \
    dirtybitmap-file="$variant" \
    < /dev/null > "$dir/out" 2> "$dir/err" || status=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-34s %4d ms  exit %d\n' "$name" $ms $status

  problems=()
  [ $status -eq 1 ] || problems+=("exit status $status, expected 1")
  # One error line naming the sidecar and the fault.
  grep -F -- "error: $variant: " "$dir/err" |
    grep -qF -- "$expected" ||
    problems+=("no error naming $variant and containing: $expected")
  [ $ms -lt 1000 ] || problems+=("took $ms ms")
  cmp -s "$variant" "$dir/pristine.qcow2" ||
    problems+=("the sidecar was modified")
  if [ ${#problems[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do
      echo "  FAILED: $p" >&2
    done
    sed 's/^/  stderr: /' "$dir/err" >&2
    failures+=("$name")
  fi
done < "$dir/manifest"

echo "$n malformed sidecars checked"
[ $n -ge 30 ] || fail "only $n cases, expected at least 30"
[ ${#failures[@]} -eq 0 ] ||
  fail "${#failures[@]} of $n cases failed: ${failures[*]}"
