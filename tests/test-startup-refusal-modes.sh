#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A start-up refusal is seen in every way nbdkit is run, and nothing
# hangs.  What the sidecar alone tells (a malformed sidecar, a missing
# one with no bitmap named) stops nbdkit before it forks or starts a
# --run command: exit status 1, the error on stderr, no pid file, no
# socket, the command never run.  The export's size, which only the
# plugin tells, is checked after the fork: in the foreground nbdkit
# exits 1; as a daemon or with --run it refuses every client at once,
# with the error in its log, and exits when stopped.  The sidecar is
# never changed.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires timeout cmp

sidecar="$tmpdir/sidecar.qcow2"
malformed="$tmpdir/malformed.qcow2"
missing="$tmpdir/missing.qcow2"
qemu-img create -q -f qcow2 "$sidecar" 1M
qemu-img bitmap --add "$sidecar" b
cp "$sidecar" "$tmpdir/sidecar.orig"
printf 'not a qcow2 file at all' > "$malformed"
cp "$malformed" "$tmpdir/malformed.orig"

malformed_msg="error: $malformed: not a qcow2 file"
missing_msg="error: $missing does not exist and no bitmap is named: add dirtybitmap=NAME"
size_msg="error: $sidecar: the sidecar's virtual size is 1048576 bytes but the export is 2097152 bytes"

# refused STATUS MESSAGE NBDKIT-ARGUMENTS...: nbdkit with the filter,
# 20 s at most, exits with STATUS and prints MESSAGE on stderr
# ($tmpdir/err).  $case names the case.
refused ()
{
  local want="$1" msg="$2"
  shift 2
  status=0
  timeout 20 nbdkit --filter="$FILTER" "$@" 2> "$tmpdir/err" || status=$?
  [ "$status" -eq "$want" ] || {
    cat "$tmpdir/err" >&2
    fail "$case: exit status $status, expected $want"
  }
  grep -qF "$msg" "$tmpdir/err" || {
    cat "$tmpdir/err" >&2
    fail "$case: no error '$msg' on stderr"
  }
}

# 1. What the sidecar alone tells: refused before the fork, every mode.
for file in "$malformed" "$missing"; do
  msg="$malformed_msg"
  [ "$file" = "$malformed" ] || msg="$missing_msg"
  sock="$tmpdir/sock"

  case="daemon, $file"
  refused 1 "$msg" -P "$tmpdir/pid" -U "$sock" --log=stderr \
    memory 1M dirtybitmap-file="$file"
  [ ! -e "$tmpdir/pid" ] || fail "$case: a pid file was written"
  [ ! -e "$sock" ] || fail "$case: the socket was left behind"

  case="foreground, $file"
  refused 1 "$msg" -f -U "$sock" memory 1M dirtybitmap-file="$file"

  case="--run nbdinfo, $file"
  refused 1 "$msg" -U - memory 1M dirtybitmap-file="$file" \
    --run "touch '$tmpdir/ran'; nbdinfo --size \"\$uri\""
  [ ! -e "$tmpdir/ran" ] || fail "$case: the --run command was started"

  # Once racy: --run true exited 0 or 1.
  for i in 1 2 3; do
    case="--run true ($i), $file"
    refused 1 "$msg" -U - memory 1M dirtybitmap-file="$file" --run true
  done
done
cmp "$malformed" "$tmpdir/malformed.orig" ||
  fail "the refusals changed the malformed sidecar"
[ ! -e "$missing" ] || fail "a refused start created $missing"

# 2. The size, after the fork.  In the foreground: exit 1 at once.
case="size, foreground"
refused 1 "$size_msg" -f -U "$tmpdir/fg.sock" memory 2M \
  dirtybitmap-file="$sidecar"

# Captive: each client of the command is refused at once (the command
# fails, and so does nbdkit); nothing waits.
case="size, --run nbdinfo twice"
refused 1 "$size_msg" -U - memory 2M dirtybitmap-file="$sidecar" \
  --run "nbdinfo --size \"\$uri\" && exit 0
         nbdinfo --size \"\$uri\" && exit 0
         exit 1"
[ "$(grep -c "server has no export named ''" "$tmpdir/err")" -eq 2 ] || {
  cat "$tmpdir/err" >&2
  fail "$case: the command's two clients were not both refused"
}

# A daemon: the pid file names a live nbdkit that refuses every client
# at once with the error in its log (-v keeps a daemon's stderr), and
# exits when stopped.
case="size, daemon"
sock="$tmpdir/daemon.sock"
status=0
nbdkit -v --log=stderr -P "$tmpdir/daemon.pid" -U "$sock" \
  --filter="$FILTER" memory 2M dirtybitmap-file="$sidecar" \
  2> "$tmpdir/err" || status=$?
[ "$status" -eq 0 ] || fail "$case: the daemon's parent exited $status"
pid="$(cat "$tmpdir/daemon.pid")"
# Killed at exit only while it runs: its pid may be reused afterwards.
cleanup_fn '[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null'
for i in 1 2; do
  status=0
  timeout 10 nbdinfo --size "nbd+unix:///?socket=$sock" \
    2>> "$tmpdir/client.err" || status=$?
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] ||
    fail "$case: client $i: status $status (served, or left waiting)"
done
kill -0 "$pid" || fail "$case: the daemon died while refusing clients"
[ "$(grep -cF "$size_msg" "$tmpdir/err")" -eq 3 ] || {
  cat "$tmpdir/err" >&2
  fail "$case: the log does not hold the error at start-up and per client"
}
grep -qF "every client is refused until nbdkit is stopped" "$tmpdir/err" ||
  fail "$case: the log does not say that clients are refused"
kill "$pid"
for (( i = 0; i < 200; i++ )); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
! kill -0 "$pid" 2>/dev/null || fail "$case: the daemon did not stop"
pid=

cmp "$sidecar" "$tmpdir/sidecar.orig" ||
  fail "the refused starts changed the sidecar"
qemu_check "$sidecar"
