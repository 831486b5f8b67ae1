#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# 16 clients connected at the same time, each sending its own requests
# (some in granules other clients write too), are all recorded: the
# stored map is exactly the union of every client's requests.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
size=$((256 * 1024 * 1024))
gran=65536
clients=16

# Each thread opens its own connection; all 16 are open together
# (barrier) before any request is sent.  Requests are deterministic
# per client and logged as "offset length".
cat > "$tmpdir/clients.py" <<EOF
import random, sys, threading
import nbd

uri = sys.argv[1]
size = $size
clients = $clients
barrier = threading.Barrier(clients)
logs = [None] * clients
errors = []

def requests(c):
    rng = random.Random(1000 + c)
    reqs = []
    for i in range(96):
        count = rng.randint(1, 20000)
        offset = rng.randint(0, size - count)
        reqs.append((rng.choice(["write", "write", "zero", "trim"]),
                     offset, count))
    # Shared granules: every client touches the first, a middle and the
    # last granule, each at its own bytes.
    reqs.append(("write", c * 4096, 100))
    reqs.append(("zero", 100 * 65536 + c * 1000, 1000))
    reqs.append(("write", size - 1 - c, 1))
    reqs.append(("trim", 3 * 65536 - 8 + c * 512, 16))
    return reqs

def client(c):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        barrier.wait(timeout=30)
        reqs = requests(c)
        for kind, offset, count in reqs:
            if kind == "write":
                h.pwrite(bytes([c + 1]) * count, offset)
            elif kind == "zero":
                h.zero(count, offset)
            else:
                h.trim(count, offset)
        h.flush()
        h.shutdown()
        logs[c] = reqs
    except Exception as e:
        errors.append("client %d: %s" % (c, e))
        barrier.abort()

threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit("\n".join(errors))
with open("$tmpdir/requests.log", "w") as f:
    for reqs in logs:
        for kind, offset, count in reqs:
            f.write("%d %d\n" % (offset, count))
EOF

nbdkit_filter -U - memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=par \
  --run "/usr/bin/python3 '$tmpdir/clients.py' \"\$uri\""

[ "$(wc -l < "$tmpdir/requests.log")" -eq $((clients * 100)) ] ||
  fail "not every client logged its 100 requests"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" par)" = "auto 65536" ] ||
  fail "flags of 'par' are '$(bitmap_flags "$sidecar" par)'"

dirty_map "$sidecar" par > "$tmpdir/dirty"
expected_map $gran $size < "$tmpdir/requests.log" > "$tmpdir/expected"
if ! cmp -s "$tmpdir/dirty" "$tmpdir/expected"; then
  diff "$tmpdir/expected" "$tmpdir/dirty" >&2 || :
  fail "dirty map differs from the union of all clients' requests"
fi
# The map must not be trivially the whole disk.
[ "$(cat "$tmpdir/dirty")" != "0 $size" ] || fail "the whole disk is dirty"
echo "$0: $(wc -l < "$tmpdir/dirty") dirty ranges"
