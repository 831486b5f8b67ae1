#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The filter's own writes never make the data look written behind its
# back: 20 clean runs in a row with writes (nbdkit --run), then runs
# that only read, a -r server, a daemon stopped with SIGTERM through
# its -P pid file and a foreground nbdkit stopped by SIGINT, keep the
# bitmap exact and consistent, and no run calls it stale.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

size=$((8 * 1024 * 1024))
disk="$tmpdir/disk.img" sidecar="$tmpdir/disk.qcow2"
truncate -s $size "$disk"
args=(file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b)
ranges=""

no_alarm ()
{
  if grep -q "written without this filter" "$1"; then
    cat "$1" >&2
    fail "$2: called stale"
  fi
}

for i in $(seq 0 19); do
  nbdkit_filter -U - "${args[@]}" \
    --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"r\" * 512, $i * 131072)'" \
    2> "$tmpdir/run.err" || { cat "$tmpdir/run.err" >&2; fail "run $i failed"; }
  no_alarm "$tmpdir/run.err" "run $i"
  ranges+="$((i * 131072)) 512"$'\n'
done
expected="$(printf '%s' "$ranges" | expected_map 65536 $size)"
assert_map "$sidecar" b "$expected"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "after 20 runs: 'b' is '$(bitmap_flags "$sidecar" b)'"

# Reads only, through a writable server; then a read-only server,
# which changes nothing at all.
nbdkit_filter -U - "${args[@]}" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pread(65536, 0)"' \
  2> "$tmpdir/read.err"
no_alarm "$tmpdir/read.err" "a run with reads only"
cp "$sidecar" "$tmpdir/before-r.qcow2"
nbdkit_filter -r -U - "${args[@]}" \
  --run '/usr/bin/python3 -m nbd -u "$uri" -c "h.pread(65536, 0)"' \
  2> "$tmpdir/ro.err"
no_alarm "$tmpdir/ro.err" "nbdkit -r"
cmp "$sidecar" "$tmpdir/before-r.qcow2" || fail "nbdkit -r changed the sidecar"

# A daemon, stopped through its pid file.
nbdkit --filter="$FILTER" -U "$tmpdir/daemon.sock" -P "$tmpdir/daemon.pid" \
  "${args[@]}" 2> "$tmpdir/daemon.err"
uri="nbd+unix:///?socket=$tmpdir/daemon.sock"
write_ranges "$(printf '%s\n' "$((3 * 1024 * 1024)) 512")"
pid="$(cat "$tmpdir/daemon.pid")"
kill -TERM "$pid"
for (( i = 0; i < 200; i++ )); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
kill -0 "$pid" 2>/dev/null && fail "the daemon did not stop"
no_alarm "$tmpdir/daemon.err" "the daemon"
ranges+="$((3 * 1024 * 1024)) 512"$'\n'

# In the foreground, stopped by a signal.
start_nbdkit_background "$tmpdir/fg.sock" "${args[@]}"
uri="nbd+unix:///?socket=$tmpdir/fg.sock"
no_alarm "$tmpdir/fg.sock.err" "the foreground nbdkit"
write_ranges "$(printf '%s\n' "$((5 * 1024 * 1024)) 512")"
kill -INT "$nbdkit_pid"
wait_nbdkit_exit
[ $status -eq 0 ] || { cat "$tmpdir/fg.sock.err" >&2; fail "exit $status"; }
ranges+="$((5 * 1024 * 1024)) 512"$'\n'

# And the next run finds them all, exact and consistent.
nbdkit_filter -U - "${args[@]}" --run 'true' 2> "$tmpdir/last.err"
no_alarm "$tmpdir/last.err" "the last run"
assert_map "$sidecar" b "$(printf '%s' "$ranges" | expected_map 65536 $size)"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "at the end: 'b' is '$(bitmap_flags "$sidecar" b)'"
qemu_check "$sidecar"
