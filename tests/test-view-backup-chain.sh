#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The man page's backup script ("A backup chain through views"), taken
# from the POD exactly as printed, makes a full backup and three
# incrementals as a qcow2 chain while four writers load the disk
# (tests/helpers/viewload.py).  Each chain, restored with qemu-img
# convert as the page says, must be the disk at one instant during its
# run, as the writers' log tells it (requests in flight wholly in or
# wholly out); the incrementals copy less than the disk; nothing is
# left but the last checkpoint and the chain.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

pod="$abs_top_srcdir/man/nbdkit-dirtybitmap-filter.pod"
/usr/bin/python3 - "$pod" > "$tmpdir/backup.py" <<'EOF'
import sys
text = open(sys.argv[1]).read()
section = text[text.index("=head2 A backup chain through views"):]
section = section[:section.index("\n=head")]
lines = section.split("\n")
start = lines.index(" #!/usr/bin/python3")
for line in lines[start:]:
    if line and not line.startswith(" "):
        break
    print(line[1:])
EOF
grep -q '^print(' "$tmpdir/backup.py" || fail "no backup script found in the POD"
chmod +x "$tmpdir/backup.py"

sock="$tmpdir/sock"
ctl="$tmpdir/ctl"
start_with_control 16M
mkdir "$tmpdir/backups"

HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
/usr/bin/python3 - "$sock" "$ctl" "$tmpdir" <<'EOF'
import os, subprocess, sys, time
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp
from viewload import *

sock, ctl, tmp = sys.argv[1:]
SIZE = 16 << 20
backups = tmp + "/backups"

h = nbd.NBD()
h.connect_unix(sock)
fill(h, SIZE)
h.shutdown()

# The writers keep to the first 6 MiB, so that incrementals copy less.
REGION = 6 << 20
load = Load("nbd+unix:///?socket=" + sock, SIZE, writers=4, pause=0.002,
            region=REGION)
load.start()
runs = []
try:
    for n in range(4):
        time.sleep(0.3)
        instant, out = load.instant(lambda: subprocess.run(
            [tmp + "/backup.py", sock, ctl, backups], check=True,
            capture_output=True, text=True))
        restored = "%s/restored-%d.img" % (tmp, n)
        subprocess.run(["qemu-img", "convert", "-O", "raw",
                        "%s/%d.qcow2" % (backups, n), restored], check=True)
        runs.append((n, instant, out.stdout.strip(), restored))
finally:
    load.finish()

for n, instant, printed, restored in runs:
    copied = int(printed.split()[1])
    assert printed == "%s/%d.qcow2: %d bytes copied" % (backups, n, copied), \
        printed
    assert copied == SIZE if n == 0 else 0 < copied <= REGION, printed
    data = open(restored, "rb").read()
    assert len(data) == SIZE, (restored, len(data))
    flights = check_view(load, "backup %d" % n, instant, [(0, SIZE)], [data])
    print("%s; the chain restores the disk at the instant of its view "
          "(%d requests in flight during the run)" % (printed, flights))

c = qmp.Client(ctl)
assert c.ok("x-dirtybitmap-query-views") == []
names = [b["name"] for b in c.ok("query-dirty-bitmaps")]
assert names == ["backup-3"], names
c.close()
EOF
for n in 0 1 2 3; do
  qemu-img check -q "$tmpdir/backups/$n.qcow2" ||
    fail "qemu-img check backups/$n.qcow2"
done
chain="$(qemu-img info --backing-chain "$tmpdir/backups/3.qcow2" |
         awk '/^image:/ { sub(".*/", "", $2); printf "%s ", $2 }')"
[ "$chain" = "3.qcow2 2.qcow2 1.qcow2 0.qcow2 " ] ||
  fail "backing chain of 3.qcow2: $chain"
stop_cleanly
qemu_check "$tmpdir/sidecar.qcow2"
