#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The man page's "An incremental backup, step by step" works as
# printed: its command blocks are taken from the POD and run in order
# on a 1 GiB disk (only --filter=dirtybitmap is pointed at the build
# tree); the map it prints is the one the page shows, and the backup
# ends identical to the disk.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp dd

pod="$abs_top_srcdir/man/nbdkit-dirtybitmap-filter.pod"
mkdir "$tmpdir/blocks"
# One file per verbatim block of the section, numbered in order; the
# blocks the page shows as output are named *.out.
/usr/bin/python3 - "$pod" "$tmpdir/blocks" <<'PYEOF'
import re, sys
pod, out = sys.argv[1], sys.argv[2]
text = open(pod).read()
start = text.index("=head2 An incremental backup, step by step")
end = text.index("\n=back", start)
blocks, cur = [], []
for line in text[start:end].split("\n"):
    if line.startswith(" "):
        cur.append(line[1:])
    else:
        if cur:
            blocks.append(cur)
        cur = []
for i, b in enumerate(blocks):
    kind = "out" if re.match(r"\s*\d", b[0]) else "sh"
    open("%s/%02d.%s" % (out, i, kind), "w").write("\n".join(b) + "\n")
PYEOF
ls "$tmpdir/blocks" | grep -q '\.out$' || fail "no example output found in the POD"
[ "$(ls "$tmpdir/blocks" | grep -c '\.sh$')" -ge 8 ] ||
  fail "the example's command blocks were not found in the POD"

cd "$tmpdir"
truncate -s 1G disk.img
# If the example fails before its step 3 stops nbdkit (a pid read
# later may be anyone's, so only an nbdkit is killed).
cleanup_fn 'p=$(cat "$tmpdir/nbdkit.pid" 2>/dev/null) &&
  [ "$(ps -o comm= -p "$p")" = nbdkit ] && kill "$p"'
last_output=
for block in blocks/*; do
  case "$block" in
    *.out)
      # The output shown must be what the previous command printed.
      if ! diff -u <(awk '{ $1 = $1; print }' "$block") \
                   <(awk '{ $1 = $1; print }' "$last_output"); then
        fail "the example's output differs from the man page (${block##*/})"
      fi
      ;;
    *.sh)
      sed "s|--filter=dirtybitmap |--filter=$FILTER |" "$block" > run.sh
      last_output="$block.printed"
      bash -e run.sh > "$last_output" 2>&1 || {
        cat "$last_output" >&2
        fail "the example's block ${block##*/} failed: $(cat "$block")"
      }
      ;;
  esac
done
cmp disk.img backup.img || fail "backup.img differs from disk.img"
qemu_check disk.bitmaps.qcow2
[ "$(bitmap_flags disk.bitmaps.qcow2 backup2)" = "auto 65536" ] ||
  fail "step 6 did not leave backup2 recording"
