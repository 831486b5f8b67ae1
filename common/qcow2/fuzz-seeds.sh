#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Make the seed corpus of fuzz-sidecar in DIR with QEMU's tools: small
# qcow2 files covering the layouts the loader meets (no bitmap, one,
# several of different granularities with one disabled, bitmap data,
# 512-byte clusters, 1- and 64-bit refcounts, a disk that is not a
# multiple of 64 KiB, a backing file name, zstd, extended L2, bitmaps
# left in use, the lazy-refcounts dirty bit).  Bitmaps get data from
# writes made while they are recording.  Seeds are made at run time and
# not kept in git.
#
# Usage: fuzz-seeds.sh DIR [MAX_LEN]
# A seed larger than MAX_LEN (default 262144, the fuzzer's -max_len)
# would be truncated by libFuzzer, so it is left out with a warning.
# Exits 1 if qemu-img or qemu-io is missing.
set -euo pipefail

dir="${1:?usage: fuzz-seeds.sh DIR [MAX_LEN]}"
max_len="${2:-262144}"

for cmd in qemu-img qemu-io; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "fuzz-seeds.sh: $cmd is not installed (Debian: qemu-utils)" >&2
    exit 1
  fi
done
mkdir -p "$dir"
work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-seeds-work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# create NAME SIZE [qemu-img create -o options]
create ()
{
  local opts="${3:-}"
  qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$work/$1.qcow2" "$2"
}
# bitmap NAME BITMAP [qemu-img bitmap options...]
bitmap ()
{
  local name="$1" bm="$2"
  shift 2
  qemu-img bitmap -f qcow2 --add "$@" "$work/$name.qcow2" "$bm"
}
# write NAME OFFSET LENGTH...: guest writes, recorded by recording bitmaps
# (of zeros, so that no data clusters make the seed larger)
write ()
{
  local name="$1" args=()
  shift
  while [ $# -ge 2 ]; do
    args+=(-c "write -z $1 $2")
    shift 2
  done
  qemu-io -f qcow2 "${args[@]}" "$work/$name.qcow2" >/dev/null
}
# crash NAME: write, then abort as a crashing QEMU would, leaving the
# bitmaps IN_USE (and, with lazy refcounts, the dirty bit set)
crash ()
{
  ( ulimit -c 0
    qemu-io -f qcow2 -c 'write -P 0xa5 0 4k' -c abort "$work/$1.qcow2" \
      >/dev/null 2>&1 || : ) 2>/dev/null
}

# Default 64 KiB clusters: only an image without bitmaps fits in
# MAX_LEN (with bitmaps it takes at least 6 clusters).
create empty-64k 64M

create empty 64M cluster_size=4096

create one 64M cluster_size=4096
bitmap one b0

create several 64M cluster_size=4096
bitmap several fine -g 512
bitmap several mid -g 65536
bitmap several coarse-off -g 2M --disable
bitmap several dflt
write several 0 64k 10M 4k

create data 64M cluster_size=4096
bitmap data b0 -g 4096
write data 0 64k 10M 4k 67108352 512

create c512 64M cluster_size=512
bitmap c512 b512 -g 512
bitmap c512 b64k -g 65536
write c512 0 4k 10M 512

create refcount1 64M cluster_size=4096,refcount_bits=1
bitmap refcount1 b0 -g 4096
write refcount1 0 8k

create refcount64 64M cluster_size=4096,refcount_bits=64
bitmap refcount64 b0 -g 4096
write refcount64 0 8k

# 100005 bytes: QEMU rounds to 100352, 196 sectors; neither that nor
# the bitmaps' sizes (196 and 2 granules) is a multiple of 64.
create odd 100005 cluster_size=4096
bitmap odd b512 -g 512
bitmap odd b64k -g 65536
write odd 0 512 99840 512

create big 16G cluster_size=4096
bitmap big b64k -g 65536
write big 0 4k 17179865088 4k

create base 64M cluster_size=4096
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 \
  "$work/backing.qcow2"
bitmap backing b0
write backing 1M 4k

create zstd 64M cluster_size=4096,compression_type=zstd
bitmap zstd b0
write zstd 0 4k

create extl2 64M cluster_size=16384,extended_l2=on
bitmap extl2 b0 -g 16384
write extl2 0 16k

# Tiny images (a few KiB), whose every byte matters to the loader:
# mutations land on structures rather than on padding.
create tiny 1M cluster_size=512
bitmap tiny b512 -g 512
bitmap tiny b4k -g 4096
bitmap tiny off -g 65536 --disable
write tiny 0 4k 1040384 8k

create tiny-refcount2 1M cluster_size=512,refcount_bits=2
bitmap tiny-refcount2 b0 -g 1024
write tiny-refcount2 512 1k

create tiny-in-use 1M cluster_size=512
bitmap tiny-in-use b0 -g 512
bitmap tiny-in-use b1 -g 2048
crash tiny-in-use

create in-use 64M cluster_size=4096
bitmap in-use b0
bitmap in-use off --disable
crash in-use

create lazy-dirty 64M cluster_size=4096,lazy_refcounts=on
bitmap lazy-dirty b0
crash lazy-dirty

n=0
for f in "$work"/*.qcow2; do
  size=$(stat -c %s "$f")
  if [ "$size" -gt "$max_len" ]; then
    echo "fuzz-seeds.sh: leaving out $(basename "$f"): $size bytes" \
         "is over $max_len" >&2
    continue
  fi
  cp "$f" "$dir/"
  n=$((n + 1))
done
echo "fuzz-seeds.sh: $n seeds in $dir"
