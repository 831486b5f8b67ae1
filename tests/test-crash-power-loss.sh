#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A power failure at any instant loses nothing that was acknowledged.
# powerloss.so, preloaded into nbdkit, makes the power fail at the K-th
# write or sync of the sidecar: every change not yet made durable by
# fsync or fdatasync is undone and nbdkit is killed.  A client sends a
# fixed series of writes, zeroes and trims, noting each one the server
# acknowledged, and nbdkit is then stopped cleanly, so that K can fall
# in the start-up commit, among the requests or in the store at exit.
# After a restart without the power failure, one writable connection
# and a clean stop, the sidecar passes qemu-img check, both bitmaps
# (b0, made by the filter at 64 KiB, and b4k, made by qemu-img at
# 4 KiB) are consistent, and each holds every granule of every
# acknowledged request.
#
# A dry run without a power failure counts the calls (total T) and
# checks the harness itself: exact maps.  Then K runs over 1, 2, 3,
# the last 3 and random values of [1, T].
#   POWERLOSS_SEED=N        seed of the random K values (printed)
#   POWERLOSS_ITERATIONS=N  number of K values (default 24)
#   POWERLOSS_K="K1 K2..."  exactly these K values instead
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp

shim="$abs_top_builddir/tests/helpers/.libs/powerloss.so"
[ -f "$shim" ] || fail "$shim is not built (make -C tests helpers/powerloss.la)"

size=$((64 * 1024 * 1024))
seed="${POWERLOSS_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
iterations="${POWERLOSS_ITERATIONS:-24}"
echo "$0: POWERLOSS_SEED=$seed POWERLOSS_ITERATIONS=$iterations"

# 1. The shim itself, on a plain file written by Python: for every K,
# the file holds exactly what the last sync before call K made durable,
# and another file (not POWERLOSS_FILE) keeps every write.
cat > "$tmpdir/selftest.py" <<'EOF'
import os, sys
path, other, upto = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Calls 1-9 on PATH; with UPTO > 0 (no shim) stop after call UPTO.
ops = [
    lambda fd: os.pwrite(fd, b"A" * 10, 0),
    lambda fd: os.fdatasync(fd),
    lambda fd: os.pwrite(fd, b"B" * 10, 5),
    lambda fd: os.pwrite(fd, b"C" * 100, 70000),     # extends the file
    lambda fd: os.ftruncate(fd, 3),                  # shrinks it
    lambda fd: os.write(fd, b"D" * 7),               # at the file offset, 0
    lambda fd: os.fsync(fd),
    lambda fd: os.ftruncate(fd, 50000),
    lambda fd: os.pwrite(fd, b"E" * 3, 40000),
]
fd = os.open(path, os.O_RDWR)
ofd = os.open(other, os.O_RDWR)
for i, op in enumerate(ops, 1):
    if upto and i > upto:
        break
    os.pwrite(ofd, b"%d" % i, 0)                     # never counted
    op(fd)
EOF
printf 'initial contents %.0s' {1..100} > "$tmpdir/initial"
for (( k = 0; k <= 10; k++ )); do
  cp "$tmpdir/initial" "$tmpdir/f"
  : > "$tmpdir/other"
  rm -f "$tmpdir/selftest.log"
  st=0
  # (bash reports the SIGKILL on its stderr: into the file with Python's)
  { env LD_PRELOAD="$shim" POWERLOSS_FILE="$tmpdir/f" POWERLOSS_AFTER=$k \
        POWERLOSS_LOG="$tmpdir/selftest.log" \
      /usr/bin/python3 "$tmpdir/selftest.py" "$tmpdir/f" "$tmpdir/other" 0 ||
      st=$?; } 2> "$tmpdir/selftest.err"
  # What is durable at call K: everything up to the last sync before it.
  case $k in
    0|10) last_sync=9 want_st=0 ;;   # no failure: every call's result
    1|2)  last_sync=0 want_st=137 ;;
    [3-7]) last_sync=2 want_st=137 ;;
    *)    last_sync=7 want_st=137 ;;
  esac
  [ "$st" -eq "$want_st" ] ||
    fail "shim self-test K=$k: exit status $st, expected $want_st:" \
         "$(cat "$tmpdir/selftest.err")"
  cp "$tmpdir/initial" "$tmpdir/want"
  if (( last_sync > 0 )); then
    /usr/bin/python3 "$tmpdir/selftest.py" "$tmpdir/want" /dev/null $last_sync
  fi
  cmp -s "$tmpdir/f" "$tmpdir/want" ||
    fail "shim self-test K=$k: the file is not as of call $last_sync"
  if (( want_st == 0 )); then
    grep -qx "calls 9" "$tmpdir/selftest.log" ||
      fail "shim self-test K=$k: log: $(cat "$tmpdir/selftest.log")"
    [ "$(cat "$tmpdir/other")" = 9 ] || fail "shim self-test: other file"
  else
    grep -q "^power failed at call $k " "$tmpdir/selftest.log" ||
      fail "shim self-test K=$k: log: $(cat "$tmpdir/selftest.log")"
    [ "$(cat "$tmpdir/other")" = $k ] || fail "shim self-test: other file"
  fi
done
echo "$0: shim self-test passed"

# 2. The filter.
#
# The client: a fixed series of requests; each one acknowledged is
# appended to ACKED ("offset length") before the next is sent.
cat > "$tmpdir/client.py" <<'EOF'
import random, sys, nbd
uri, acked, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(20240601)          # the same series every run
reqs = [("write", 0, 512), ("write", size - 100, 100),
        ("zero", 3 * 65536 - 1, 2), ("trim", 10 << 20, 1 << 20)]
for i in range(56):
    kind = rng.choice(["write", "write", "write", "zero", "trim"])
    length = rng.choice([1, 512, 4096, 65536, 65537, 200000,
                         1 << 20, 3 << 20] if kind != "write"
                        else [1, 100, 512, 4096, 65536, 70000, 200000])
    offset = rng.randrange(0, size - length + 1)
    if rng.random() < 0.5:
        offset -= offset % 4096
    reqs.append((kind, offset, length))
    if i % 8 == 7:
        reqs.append(("flush", 0, 0))
h = nbd.NBD()
log = open(acked, "w")
done = 0
try:
    h.connect_uri(uri)
    for n, (kind, offset, length) in enumerate(reqs):
        flags = nbd.CMD_FLAG_FUA if n % 5 == 4 else 0
        if kind == "write":
            h.pwrite(bytes([65 + n % 26]) * length, offset, flags)
        elif kind == "zero":
            h.zero(length, offset, flags | (nbd.CMD_FLAG_NO_HOLE if n % 2 else 0))
        elif kind == "trim":
            h.trim(length, offset, flags)
        else:
            h.flush()
            continue
        log.write("%d %d\n" % (offset, length))
        log.flush()
        done += 1
except nbd.Error as e:
    print("client: stopped after %d acknowledged requests: %s" % (done, e),
          file=sys.stderr)
    sys.exit(0)
h.shutdown()
EOF

uri () { echo "nbd+unix:///?socket=$1"; }

filter_args=(memory $size dirtybitmap-file="$tmpdir/sidecar.qcow2" dirtybitmap=b0)

qemu-img create -q -f qcow2 "$tmpdir/initial.qcow2" $size
qemu-img bitmap --add -g 4K "$tmpdir/initial.qcow2" b4k

# Granules of the requests in ACKED ("offset length" lines) that are
# not dirty in bitmap NAME of granularity G, one "offset length" line
# per range: none when all are covered.  With a 4th argument, "exact",
# also complain of dirty ranges that no request explains.
cat > "$tmpdir/uncovered.py" <<'EOF'
import bisect, sys
acked, have, g, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
exact = len(sys.argv) > 5
size = (size + 511) // 512 * 512          # QEMU's sectors
want = []
for line in open(acked):
    off, length = map(int, line.split())
    want.append((off // g * g, min(size, (off + length + g - 1) // g * g)))
want.sort()
merged = []
for a, b in want:
    if merged and a <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], b)
    else:
        merged.append([a, b])
dirty = sorted(tuple(map(int, line.split())) for line in open(have))
starts = [off for off, _ in dirty]
for a, b in merged:
    i = bisect.bisect_right(starts, a) - 1
    if i < 0 or dirty[i][0] + dirty[i][1] < b:
        print(a, b - a)
if exact and [(a, b - a) for a, b in merged] != dirty:
    print("and dirty ranges beyond the requests:", dirty)
EOF
uncovered ()
{
  local name="$1" g="$2" acked="$3"
  shift 3
  dirty_map "$tmpdir/sidecar.qcow2" "$name" > "$tmpdir/have.map" 2>/dev/null
  /usr/bin/python3 "$tmpdir/uncovered.py" "$acked" "$tmpdir/have.map" \
    "$g" $size "$@"
}

# One run with the power failing at call K (0: never), in directory
# $tmpdir/kK, removed if all is well (but for K=0).  Prints why and
# returns 1 when the guarantee does not hold.
run_one ()
{
  local k="$1" dir="$tmpdir/k$1" st want name g missing
  rm -rf "$dir"
  mkdir "$dir"
  cp "$tmpdir/initial.qcow2" "$tmpdir/sidecar.qcow2"

  # Run 1, with the shim.
  nbdkit_under=(env LD_PRELOAD="$shim" POWERLOSS_AFTER="$k"
                POWERLOSS_FILE="$tmpdir/sidecar.qcow2"
                POWERLOSS_LOG="$dir/shim.log" POWERLOSS_TRACE=$(( k == 0 )))
  start_nbdkit_background "$dir/s1" "${filter_args[@]}"
  nbdkit_under=()
  /usr/bin/python3 "$tmpdir/client.py" "$(uri "$dir/s1")" "$dir/acked" $size \
    2> "$dir/client.err" || { cat "$dir/client.err" >&2; fail "client failed"; }
  kill -TERM "$nbdkit_pid" 2>/dev/null || :
  wait_nbdkit_exit
  if (( k == 0 )) && [ -s "$dir/client.err" ]; then
    echo "$(cat "$dir/client.err") (without a power failure)"
    return 1
  fi
  want=0
  grep -q "^power failed" "$dir/shim.log" 2>/dev/null && want=137
  if [ "$status" -ne "$want" ]; then
    echo "run 1 exited with status $status, expected $want:" \
         "$(tail -n 3 "$dir/s1.err")"
    return 1
  fi

  # Run 2, without: one writable connection, no write, a clean stop.
  restart_after_crash "$dir/s2" "${filter_args[@]}" || return 1

  st=0
  qemu-img check "$tmpdir/sidecar.qcow2" > "$dir/check" 2>&1 || st=$?
  if [ "$st" -ne 0 ]; then
    case $st in
      3) echo "qemu-img check: leaked clusters:" ;;
      2) echo "qemu-img check: corruption:" ;;
      *) echo "qemu-img check failed (exit status $st):" ;;
    esac
    grep -v '^$' "$dir/check" | head -n 8
    return 1
  fi
  for name in b0:65536 b4k:4096; do
    g=${name#*:} name=${name%:*}
    st="$(bitmap_flags "$tmpdir/sidecar.qcow2" $name)"
    if [ "$st" != "auto $g" ]; then
      echo "bitmap $name after run 2 is '$st', not 'auto $g'" \
           "(run 2 said: $(tail -n 3 "$dir/s2.err"))"
      return 1
    fi
    # Without a power failure the map is exact.
    missing="$(uncovered $name $g "$dir/acked" $( (( k )) || echo exact))"
    if [ -n "$missing" ]; then
      echo "bitmap $name lacks $(wc -l <<< "$missing") acknowledged" \
           "ranges (offset length), among them:" $(head -n 4 <<< "$missing")
      return 1
    fi
  done
  (( k == 0 )) || rm -rf "$dir"
}

start=$SECONDS
run_one 0 > "$tmpdir/why" || fail "dry run: $(cat "$tmpdir/why")"
total=$(awk '$1 == "calls" { print $2 }' "$tmpdir/k0/shim.log")
[ -n "$total" ] && (( total > 0 )) ||
  fail "the shim saw no write or sync of the sidecar in the dry run"
echo "$0: dry run: $(wc -l < "$tmpdir/k0/acked") requests acknowledged," \
     "$total writes and syncs of the sidecar ($(( SECONDS - start )) s)"

if [ -n "${POWERLOSS_K:-}" ]; then
  ks="$POWERLOSS_K"
else
  ks="$( { printf '%s\n' 1 2 3 $(( total - 2 )) $(( total - 1 )) $total
           /usr/bin/python3 -c 'import random, sys
r = random.Random(int(sys.argv[1]))
for _ in range(int(sys.argv[3])): print(r.randint(1, int(sys.argv[2])))' \
             "$seed" "$total" "$iterations"
         } | awk '$1 >= 1 && !seen[$1]++' | head -n "$iterations")"
fi

failed=()
for k in $ks; do
  what="$(awk -v k="$k" '$1 == "call" && $2 == k":" {
                             sub(/^call [0-9]+: /, ""); print }' \
           "$tmpdir/k0/shim.log")"
  if run_one "$k" > "$tmpdir/why"; then
    echo "K=$k ($what): ok"
  else
    echo "K=$k ($what): FAILED: $(cat "$tmpdir/why")"
    echo "  shim: $(cat "$tmpdir/k$k/shim.log" 2>/dev/null)"
    failed+=("$k")
  fi
done
echo "$0: $(wc -w <<< "$ks") power failures in $(( SECONDS - start )) s"
(( ${#failed[@]} == 0 )) ||
  fail "the guarantee failed for K = ${failed[*]}" \
       "(rerun: POWERLOSS_K=\"${failed[*]}\" $0)"
