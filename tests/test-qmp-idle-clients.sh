#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Idle connections cannot lock the control socket: with nbdkit running
# as a daemon, 64 clients that connect and never negotiate fill every
# slot (the 65th is refused with the limit), and within a few seconds
# each gets an error and is closed; a client that negotiated stays
# however long it idles, and a new client then gets in.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
pidfile="$tmpdir/nbdkit.pid"

# As a daemon: nbdkit forks, and the pid file says when it serves.
nbdkit_filter -P "$pidfile" -U "$sock" memory 16M \
  dirtybitmap-file="$tmpdir/sidecar.qcow2" dirtybitmap-control="$ctl"
cleanup_fn 'kill $(cat "$pidfile") 2>/dev/null'
for (( i = 0; i < 100; i++ )); do
  [ -s "$pidfile" ] && [ -S "$ctl" ] && break
  sleep 0.1
done
[ -S "$ctl" ] || fail "no control socket at $ctl"

PYTHONPATH="$abs_top_srcdir/tests/helpers" /usr/bin/python3 - "$ctl" <<'PYEOF'
import socket, sys, time
import qmp

path = sys.argv[1]
LIMIT = 64

def fail(msg):
    sys.exit("test-qmp-idle-clients: FAIL: " + msg)

# One client negotiates first and then idles past the deadline.
patient = qmp.Client(path)

idle = []
for i in range(LIMIT - 1):
    c = qmp.Client(path, negotiate=False)
    if "QMP" not in c.greeting:
        fail("connection %d got %r instead of the greeting" % (i, c.greeting))
    idle.append(c)

# Every slot is taken: the next connection is refused with the limit.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)
refusal = s.recv(4096).decode()
if "too many clients" not in refusal or "limit is 64" not in refusal:
    fail("65th connection: %r" % refusal)
s.close()

# The idle ones are told why and closed, within the deadline and a
# little slack; none is closed long before it.
start = time.monotonic()
for i, c in enumerate(idle):
    reply = c.read()
    desc = reply.get("error", {}).get("desc", "")
    if "no qmp_capabilities within 5 seconds" not in desc:
        fail("idle connection %d: %r" % (i, reply))
    try:
        c.read()
        fail("idle connection %d still open after its error" % i)
    except EOFError:
        pass
waited = time.monotonic() - start
if waited > 15:
    fail("idle connections closed only after %.1f s" % waited)

# The negotiated client was left alone, and there is room again.
reply = patient.execute("query-dirty-bitmaps")
if reply != {"return": []}:
    fail("negotiated client after idling: %r" % reply)
fresh = qmp.Client(path)
if fresh.execute("query-dirty-bitmaps") != {"return": []}:
    fail("a new client could not get in")
print("64 slots filled, 63 idle clients closed in %.1f s" % waited)
PYEOF
