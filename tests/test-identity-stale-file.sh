#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A write to the file plugin's disk that bypassed the filter, between
# two runs, is never hidden: the next run does not present the bitmap
# as consistent without that write's granule.  Each way of writing
# (dd of one byte in the middle, qemu-io, truncate to the same size,
# cp of another image over it, touch -d setting the mtime back) under
# each dirtybitmap-in-use policy:
#   keep:   'b' is flagged in use (another bitmap records), with the
#           evidence in the warning;
#   reset:  'b' is all dirty and records again;
#   refuse: nbdkit exits 1 naming the evidence, the sidecar unchanged.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp dd truncate touch qemu-io

size=$((16 * 1024 * 1024))
write='/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\"w\" * 512, 65536)"'

write_behind_filter ()
{
  local disk="$1"
  case "$2" in
    dd) printf z | dd of="$disk" bs=1 seek=$((size / 2)) conv=notrunc \
          status=none ;;
    qemu-io) qemu-io -f raw -c "write -P 0x61 $((size / 2)) 512" "$disk" \
               > /dev/null ;;
    truncate) truncate -s $size "$disk" ;;
    cp) truncate -s $size "$tmpdir/other.img"; cp "$tmpdir/other.img" "$disk" ;;
    touch) printf z | dd of="$disk" bs=1 seek=$((size / 2)) conv=notrunc \
             status=none
           touch -d "2020-01-01 00:00:00" "$disk" ;;
  esac
}

for how in dd qemu-io truncate cp touch; do
  for policy in keep reset refuse; do
    disk="$tmpdir/$how-$policy.img" sidecar="$tmpdir/$how-$policy.qcow2"
    err="$tmpdir/$how-$policy.err"
    truncate -s $size "$disk"
    nbdkit_filter -U - file "$disk" dirtybitmap-file="$sidecar" \
      dirtybitmap=b --run "$write"
    assert_map "$sidecar" b "65536 65536"
    write_behind_filter "$disk" $how
    cp "$sidecar" "$tmpdir/before.qcow2"

    # refuse stops at start-up, before serving: no --run for it (an
    # nbdkit that fails there leaves a --run command waiting).
    status=0
    if [ $policy = refuse ]; then
      timeout 20 nbdkit -f -U "$tmpdir/sock-$how" --filter="$FILTER" \
        file "$disk" dirtybitmap-file="$sidecar" dirtybitmap-in-use=refuse \
        2> "$err" || status=$?
    else
      timeout 20 nbdkit -U - --filter="$FILTER" file "$disk" \
        dirtybitmap-file="$sidecar" dirtybitmap-in-use=$policy \
        $([ $policy = keep ] && echo dirtybitmap=next) \
        --run "$write" 2> "$err" || status=$?
    fi
    grep -qF "(the data may have been written without this filter: its " \
      "$err" || { cat "$err" >&2; fail "$how, $policy: no evidence named"; }
    case $policy in
      keep)
        [ $status -eq 0 ] || { cat "$err" >&2; fail "$how, keep: exit $status"; }
        [ "$(bitmap_flags "$sidecar" b)" = "in-use,auto 65536" ] ||
          fail "$how, keep: 'b' is '$(bitmap_flags "$sidecar" b)'"
        assert_map "$sidecar" next "65536 65536" ;;
      reset)
        [ $status -eq 0 ] || { cat "$err" >&2; fail "$how, reset: exit $status"; }
        [ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
          fail "$how, reset: 'b' is '$(bitmap_flags "$sidecar" b)'"
        assert_map "$sidecar" b "0 $size" ;;
      refuse)
        [ $status -eq 1 ] || fail "$how, refuse: exit status $status"
        grep -qF "dirtybitmap-in-use=refuse stops here" "$err" ||
          { cat "$err" >&2; fail "$how, refuse: wrong error"; }
        cmp "$sidecar" "$tmpdir/before.qcow2" ||
          fail "$how, refuse: the sidecar changed" ;;
    esac
    qemu_check "$sidecar"
  done
done
