#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The man page's "An incremental backup, step by step" works as
# printed: its command blocks are taken from the POD and run in order
# on a 1 GiB disk (only --filter=dirtybitmap is pointed at the build
# tree); the map it prints is the one the page shows, and the backup
# ends identical to the disk.  Then the requests of "A checkpoint per
# backup" run as printed against a live server and back up the disk as
# it was at their transaction.
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
# The example's socket path is fixed: leave no file behind (nbdkit 1.32
# does not remove its -U file), unless someone serves it.
cleanup_fn '! ss -Hxl | grep -q " /tmp/disk.sock " && rm -f /tmp/disk.sock'
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

# "A checkpoint per backup" (LIVE CHECKPOINTS), with a view, as
# printed: its QMP requests are sent in order to a server that keeps
# taking writes; the ranges step 2 lists are copied from the view; the
# backup is then the disk at the transaction's instant, not later.
rm -f "$tmpdir/live.sock"
sock="$tmpdir/live.sock"
ctl="$tmpdir/live.ctl"
start_with_control 64M dirtybitmap=cp1
HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
/usr/bin/python3 - "$pod" "$sock" "$ctl" <<'PYEOF'
import json, os, sys
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp

pod, sock, ctl = sys.argv[1:]
text = open(pod).read()
section = text[text.index("=head2 A checkpoint per backup"):]
section = section[:section.index("\n=back")]
requests, decoder = [], json.JSONDecoder()
for block in section.split("\n\n"):
    if block.startswith(" {"):
        rest = block.strip()
        while rest:
            request, end = decoder.raw_decode(rest)
            requests.append(request)
            rest = rest[end:].strip()
assert [r["execute"] for r in requests] == [
    "transaction", "x-dirtybitmap-extents", "x-dirtybitmap-view-remove",
    "block-dirty-bitmap-remove"], requests

live = nbd.NBD()
live.connect_unix(sock)
size = live.get_size()
backup = bytearray(size)               # the last backup: the empty disk
for offset in (0, 5 << 20, 40000000):
    live.pwrite(b"hello" * 4000, offset)
disk = live.pread(size, 0)             # at the instant
c = qmp.Client(ctl)
assert c.ok(requests[0]["execute"], requests[0]["arguments"]) == {}
live.pwrite(b"later" * 40000, 0)       # after it: not in this backup
view = nbd.NBD()
view.set_export_name("backup")
view.connect_unix(sock)
arguments = dict(requests[1]["arguments"])
while arguments["offset"] is not None:
    page = c.ok(requests[1]["execute"], arguments)
    for e in page["extents"]:
        backup[e["offset"]:e["offset"] + e["length"]] = \
            view.pread(e["length"], e["offset"])
        view.trim(e["length"], e["offset"])
    arguments["offset"] = page["next"]
view.shutdown()
for r in requests[2:]:
    assert c.ok(r["execute"], r["arguments"]) == {}
assert backup == disk, "the backup is not the disk at the instant"
assert [b["name"] for b in c.ok("query-dirty-bitmaps")] == ["cp2"]
assert c.ok("x-dirtybitmap-query-views") == []
PYEOF
stop_cleanly
