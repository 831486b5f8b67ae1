#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A QMP transaction takes effect at one instant with respect to writes,
# under concurrent write load, checked against the writers' own log.
#
# Bitmap A records throughout.  Writer threads, each on its own
# connection, write 4K granules that no other write touches, logging
# when each write was sent and when it was acknowledged.  Meanwhile
# round after round, one transaction adds B_i (recording), adds F_i
# (disabled) and merges A into F_i: F_i is then what A held at the
# instant, B_i what came after it.  For every written granule g and
# every round i:
#   - g is in A;
#   - g is in exactly one of F_i and B_i (no write is recorded on both
#     sides of the instant, or on neither);
#   - acknowledged before the transaction was sent => g in F_i; sent
#     after its reply => g in B_i;
#   - the instants are ordered: g in F_i => g in F_j for every later j.
# B_i is persistent in odd rounds (committed to the sidecar inside the
# transaction), in memory in even ones.  Two transactions whose last
# action is invalid, sent under the same load, fail and change nothing:
# no bitmap added, A and B_i still recording (one of them would have
# disabled both).  After the stop, QEMU sees A and B1 in the sidecar
# as the control socket last reported them.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

sidecar="$tmpdir/sidecar.qcow2"
control="$tmpdir/qmp.sock"
size=$((4 * 1024 * 1024 * 1024))

cat > "$tmpdir/transaction.py" <<'EOF'
import os, random, sys, threading, time
import nbd

sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp

uri, control, outdir = sys.argv[1], sys.argv[2], sys.argv[3]
SIZE = int(sys.argv[4])
G = 4096
WRITERS = 8
ROUNDS = 20
NEGATIVE_AFTER = {6: "last", 13: "disable"}   # round -> kind
granules = SIZE // G
per_writer = granules // WRITERS
now = time.monotonic

stop = threading.Event()
start = threading.Barrier(WRITERS + 1)
logs = [[] for _ in range(WRITERS)]    # (granule, sent, acked)
errors = []


def writer(k):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        buf = bytes([k + 1]) * G
        log = logs[k]
        start.wait(timeout=30)
        for j in range(per_writer):
            if stop.is_set():
                break
            g = k + j * WRITERS
            sent = now()
            h.pwrite(buf, g * G)
            log.append((g, sent, now()))
        h.shutdown()
    except Exception as e:
        errors.append("writer %d: %r" % (k, e))
        start.abort()


def add(name, **data):
    data.update(name=name, granularity=G)
    return {"type": "block-dirty-bitmap-add", "data": data}


def bitmap_names(c):
    return sorted(b["name"] for b in c.ok("query-dirty-bitmaps"))


threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
for t in threads:
    t.start()
c = qmp.Client(control)
rounds = []                            # (i, T_send, T_reply)
negatives = 0
try:
    start.wait(timeout=30)
    time.sleep(0.3)
    rng = random.Random(42)
    for i in range(1, ROUNDS + 1):
        # B_i alternates between persistent (committed to the sidecar
        # inside the transaction, with the journal) and in memory.
        actions = [
            add("B%d" % i, persistent=(i % 2 == 1)),
            add("F%d" % i, disabled=True),
            {"type": "block-dirty-bitmap-merge",
             "data": {"target": "F%d" % i, "bitmaps": ["A"]}},
        ]
        t_send = now()
        reply = c.execute("transaction", {"actions": actions})
        t_reply = now()
        if reply != {"return": {}}:
            raise AssertionError("round %d: %s" % (i, reply))
        rounds.append((i, t_send, t_reply))
        time.sleep(rng.uniform(0.05, 0.25))

        kind = NEGATIVE_AFTER.get(i)
        if kind:
            before = bitmap_names(c)
            if kind == "last":
                # Valid actions first, the invalid one last.
                actions = [add("X%d" % i), add("Y%d" % i, disabled=True),
                           {"type": "block-dirty-bitmap-merge",
                            "data": {"target": "Y%d" % i,
                                     "bitmaps": ["A", "no-such-bitmap"]}}]
            else:
                # Would stop A (and B_i) recording, if applied.
                actions = [{"type": "block-dirty-bitmap-disable",
                            "data": {"name": "A"}},
                           {"type": "block-dirty-bitmap-disable",
                            "data": {"name": "B%d" % i}},
                           add("X%d" % i),
                           {"type": "block-dirty-bitmap-remove",
                            "data": {"name": "no-such-bitmap"}}]
            reply = c.execute("transaction", {"actions": actions})
            if "error" not in reply or "no-such-bitmap" not in \
                    reply["error"].get("desc", ""):
                raise AssertionError("invalid transaction (%s) after round "
                                     "%d: %s" % (kind, i, reply))
            after = c.ok("query-dirty-bitmaps")
            if sorted(b["name"] for b in after) != before:
                raise AssertionError("a failed transaction changed the "
                                     "bitmaps: %s -> %s"
                                     % (before, [b["name"] for b in after]))
            for b in after:
                if b["name"] in ("A", "B%d" % i) and not b["recording"]:
                    raise AssertionError("a failed transaction stopped %s "
                                         "recording" % b["name"])
            negatives += 1
            time.sleep(rng.uniform(0.05, 0.15))
    time.sleep(0.3)
except threading.BrokenBarrierError:
    pass                               # a writer failed: see errors
finally:
    stop.set()
    for t in threads:
        t.join()
if errors:
    sys.exit("\n".join(errors))

writes = [w for log in logs for w in log]
written = set(g for g, _, _ in writes)
assert len(written) == len(writes), "a granule was written twice"


def extents(name):
    """The dirty granules of NAME, page by page."""
    out = set()
    offset = 0
    while offset is not None:
        r = c.ok("x-dirtybitmap-extents", {"name": name, "offset": offset})
        for e in r["extents"]:
            assert e["offset"] % G == 0 and e["length"] % G == 0, e
            out.update(range(e["offset"] // G,
                             (e["offset"] + e["length"]) // G))
        offset = r["next"]
    return out


infos = {b["name"]: b for b in c.ok("query-dirty-bitmaps")}
expected_names = ["A"] + ["B%d" % i for i in range(1, ROUNDS + 1)] + \
                 ["F%d" % i for i in range(1, ROUNDS + 1)]
assert sorted(infos) == sorted(expected_names), sorted(infos)
A = extents("A")
B = {i: extents("B%d" % i) for i, _, _ in rounds}
F = {i: extents("F%d" % i) for i, _, _ in rounds}
for i, _, _ in rounds:
    assert infos["B%d" % i]["recording"] and not infos["F%d" % i]["recording"]
    assert infos["B%d" % i]["persistent"] == (i % 2 == 1)
    assert infos["B%d" % i]["count"] == len(B[i]) * G
    assert infos["F%d" % i]["count"] == len(F[i]) * G
assert infos["A"]["count"] == len(A) * G
c.close()

problems = []


def problem(msg):
    if len(problems) < 20:
        problems.append(msg)
    else:
        problems.append(None)


if A != written:
    problem("A: %d granules never written, %d written granules missing"
            % (len(A - written), len(written - A)))
for i, _, _ in rounds:
    for name, s in (("B%d" % i, B[i]), ("F%d" % i, F[i])):
        if s - written:
            problem("%s holds %d granules never written"
                    % (name, len(s - written)))

stats = {"before": 0, "after": 0, "in flight": 0}
for g, sent, acked in writes:
    last_f = None
    for i, t_send, t_reply in rounds:
        in_f, in_b = g in F[i], g in B[i]
        if in_f == in_b:
            problem("granule %d (sent %.6f, acked %.6f) is in %s of F%d and "
                    "B%d (transaction %.6f..%.6f)"
                    % (g, sent, acked, "both" if in_f else "neither",
                       i, i, t_send, t_reply))
        if acked < t_send:
            stats["before"] += 1
            if not in_f:
                problem("granule %d acked %.6f before transaction %d was "
                        "sent (%.6f) but is not in F%d"
                        % (g, acked, i, t_send, i))
        elif sent > t_reply:
            stats["after"] += 1
            if not in_b:
                problem("granule %d sent %.6f after transaction %d replied "
                        "(%.6f) but is not in B%d"
                        % (g, sent, i, t_reply, i))
        else:
            stats["in flight"] += 1
        if last_f and not in_f:
            problem("granule %d is in F%d but not in the later F%d"
                    % (g, last_f, i))
        if in_f and last_f is None:
            last_f = i

# Both sides of every instant saw writes, and some writes overlapped
# the transactions, or the test proved little.
for i, t_send, t_reply in rounds:
    n_before = sum(1 for _, _, acked in writes if acked < t_send)
    n_after = sum(1 for _, sent, _ in writes if sent > t_reply)
    if n_before == 0 or n_after == 0:
        problem("round %d: %d writes before, %d after" % (i, n_before, n_after))
if stats["in flight"] == 0:
    problem("no write was in flight during any transaction")



def write_ranges(name, s):
    """S as dirty_map prints it: "offset length", adjacent merged."""
    with open(os.path.join(outdir, name + ".expected"), "w") as f:
        run = None
        for g in sorted(s):
            if run and g == run[1]:
                run[1] = g + 1
                continue
            if run:
                f.write("%d %d\n" % (run[0] * G, (run[1] - run[0]) * G))
            run = [g, g + 1]
        if run:
            f.write("%d %d\n" % (run[0] * G, (run[1] - run[0]) * G))


write_ranges("A", A)
write_ranges("B1", B[1])

print("%d writes, %d rounds, %d failed transactions; per round and write: "
      "%d before, %d after, %d in flight"
      % (len(writes), len(rounds), negatives, stats["before"],
         stats["after"], stats["in flight"]))
if problems:
    for p in problems:
        if p:
            print(p, file=sys.stderr)
    if None in problems:
        print("(more problems not shown)", file=sys.stderr)
    sys.exit(1)
EOF

start=$SECONDS
HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
timeout 300 nbdkit -U - --filter="$FILTER" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap=A dirtybitmap-granularity=4K \
  dirtybitmap-control="$control" \
  --run "/usr/bin/python3 '$tmpdir/transaction.py' \"\$uri\" '$control' \
         '$tmpdir' $size" ||
  fail "the transactions under load did not hold (see above)"
echo "$0: the run under load and its checks took $((SECONDS - start)) s"

# QEMU agrees with what the control socket reported: A and the
# persistent B1, stored at exit.
qemu_check "$sidecar"
[ ! -e "$control" ] || fail "the control socket outlived nbdkit"
for name in A B1; do
  dirty_map "$sidecar" $name > "$tmpdir/$name.stored"
  if ! cmp -s "$tmpdir/$name.expected" "$tmpdir/$name.stored"; then
    diff "$tmpdir/$name.expected" "$tmpdir/$name.stored" | head -20 >&2 || :
    fail "stored bitmap '$name' differs from its last extents"
  fi
done
