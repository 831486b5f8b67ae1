# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Sourced by every test script.  Each test checks one behaviour, with
# QEMU's tools as the referee, and removes what it made on exit.

set -e
set -u

# Run standalone or from "make check".
: "${abs_top_srcdir:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${abs_top_builddir:=$abs_top_srcdir}"
FILTER="$abs_top_builddir/filter/.libs/nbdkit-dirtybitmap-filter.so"

# nbdsh and libnbd's Python bindings live with Debian's interpreter.
export PATH="/usr/bin:/usr/sbin:$PATH"
export LANG=C

# A missing tool fails the test in CI and skips it elsewhere.
requires ()
{
  local cmd
  for cmd in "$@"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
      if [ "${CI:-}" = "true" ]; then
        echo "$0: FAIL: required tool '$cmd' is missing (CI must install it)" >&2
        exit 1
      fi
      echo "$0: SKIP: '$cmd' is not installed" >&2
      exit 77
    fi
  done
}
requires nbdkit nbdsh nbdinfo qemu-img qemu-nbd
if [ ! -f "$FILTER" ]; then
  echo "$0: FAIL: $FILTER is not built" >&2
  exit 1
fi
if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
  requires python3-libnbd-is-not-installed
fi

# Cleanup actions run in reverse order on exit, whatever the outcome.
_cleanup_actions=()
cleanup_fn ()
{
  _cleanup_actions+=("$*")
}
_run_cleanups ()
{
  local status=$? i
  for (( i=${#_cleanup_actions[@]}-1; i>=0; i-- )); do
    eval "${_cleanup_actions[$i]}" || :
  done
  exit $status
}
trap _run_cleanups EXIT
trap 'exit 1' INT TERM

tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/dirtybitmap-test.XXXXXX")"
cleanup_fn rm -rf "$tmpdir"

# nbdkit is not built with the sanitizers, so a filter built with them
# (./configure --enable-sanitizers) needs their runtimes preloaded into
# nbdkit, and into nothing else (dd and qemu-img do not survive it).
# An nbdkit wrapper first in PATH does that however nbdkit is started
# (directly, under timeout or fiu-run); the filter then removes the
# preload from nbdkit's environment, so what nbdkit starts is clean.
# libp11-kit (which nbdkit loads through gnutls) is preloaded too: its
# constructor would otherwise call newlocale while the ASan runtime
# initialises inside it, which leaves glibc's locale lock miscounted,
# and every later newlocale (json-c calls it for each parse) hangs.
if ldd "$FILTER" | grep -q libasan; then
  mkdir "$tmpdir/sanitizer-bin"
  p11kit="$(ldd "$(command -v nbdkit)" | awk '/libp11-kit/ { print $3 }')"
  cat > "$tmpdir/sanitizer-bin/nbdkit" <<WRAPPER
#!/bin/sh
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)${p11kit:+ $p11kit}\${LD_PRELOAD:+ \$LD_PRELOAD}"
export ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
exec $(command -v nbdkit) "\$@"
WRAPPER
  chmod +x "$tmpdir/sanitizer-bin/nbdkit"
  export PATH="$tmpdir/sanitizer-bin:$PATH"
fi

fail ()
{
  echo "$0: FAIL: $*" >&2
  exit 1
}

# nbdkit with the filter from the build tree; the rest of the command
# line is passed as it is.
nbdkit_filter ()
{
  nbdkit --filter="$FILTER" "$@"
}

# Run an nbdsh script from stdin against the server at URI.
nbdsh_script ()
{
  local uri="$1"
  /usr/bin/python3 -m nbd -u "$uri" -c - 
}

# The sidecar must be clean for QEMU: no corruption, no leaks
# (qemu-img check exits 0 only then).
qemu_check ()
{
  local out
  if ! out="$(qemu-img check "$1" 2>&1)"; then
    echo "$out" >&2
    fail "qemu-img check $1 reported errors or leaks"
  fi
}

# The dirty ranges of bitmap NAME in SIDECAR as QEMU serves them, one
# "offset length" line per range, adjacent ranges merged.
dirty_map ()
{
  local sidecar="$1" name="$2"
  nbdinfo --map="qemu:dirty-bitmap:$name" -- \
    [ qemu-nbd -r -f qcow2 -B "$name" "$sidecar" ] |
  awk '$4 == "dirty" {
         if (have && $1 == off + len) { len += $2; next }
         if (have) printf "%.0f %.0f\n", off, len
         off = $1; len = $2; have = 1
       }
       END { if (have) printf "%.0f %.0f\n", off, len }'
}

# Compare the dirty map of NAME with the expected lines.
assert_map ()
{
  local sidecar="$1" name="$2" expected="$3" actual
  actual="$(dirty_map "$sidecar" "$name")"
  if [ "$actual" != "$expected" ]; then
    echo "expected dirty ranges of '$name':" >&2
    echo "$expected" >&2
    echo "actual (qemu-nbd -B $name + nbdinfo --map):" >&2
    echo "$actual" >&2
    fail "dirty map of '$name' differs"
  fi
}

# Expected dirty ranges for request ranges read from stdin ("offset
# length" per line), at granularity G on a disk of SIZE bytes.  QEMU
# sees the sidecar's disk in whole 512-byte sectors, so the map ends at
# SIZE rounded up to 512.
expected_map ()
{
  awk -v g="$1" -v size="$(( ($2 + 511) / 512 * 512 ))" '
    # Keys are formatted by hand: mawk writes large subscripts in
    # exponent notation, which loses digits.
    { first = int($1 / g); last = int(($1 + $2 - 1) / g)
      for (i = first; i <= last; i++) dirty[sprintf("%.0f", i)] = 1 }
    END {
      n = 0
      for (i in dirty) keys[n++] = i + 0
      # insertion sort is enough for the few ranges tests use
      for (a = 1; a < n; a++) { k = keys[a]; b = a - 1
        while (b >= 0 && keys[b] > k) { keys[b+1] = keys[b]; b-- }
        keys[b+1] = k }
      for (a = 0; a < n; a++) {
        start = keys[a]; stop = start
        while (a + 1 < n && keys[a+1] == stop + 1) { a++; stop++ }
        off = start * g; end = (stop + 1) * g
        if (end > size) end = size
        printf "%.0f %.0f\n", off, end - off
      }
    }'
}

# Flags of bitmap NAME as qemu-img info reports them, comma separated
# (extra qemu-img options, such as -U, go first).
bitmap_flags ()
{
  local sidecar="${@: -2:1}" name="${@: -1}"
  set -- "${@:1:$#-2}"
  qemu-img info "$@" --output=json "$sidecar" |
  /usr/bin/python3 -c '
import json, sys
info = json.load(sys.stdin)
name = sys.argv[1]
for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", []):
    if b["name"] == name:
        print(",".join(b["flags"]), b["granularity"])
        sys.exit(0)
print("absent")' "$name"
}

# Start nbdkit with the filter in the background, serving on Unix
# socket SOCK (pid file SOCK.pid, stderr in SOCK.err), and wait until
# it serves; the rest of the arguments are nbdkit's.  Sets $nbdkit_pid
# (nbdkit's own pid: no subshell in between).  To run nbdkit under
# another program, put that command in the array nbdkit_under, e.g.
# nbdkit_under=(fiu-run -x).
start_nbdkit_background ()
{
  local sock="$1" i
  shift
  ${nbdkit_under[@]+"${nbdkit_under[@]}"} \
    nbdkit -f -U "$sock" -P "$sock.pid" --filter="$FILTER" "$@" \
    2> "$sock.err" &
  nbdkit_pid=$!
  cleanup_fn "kill -9 $nbdkit_pid 2>/dev/null"
  for (( i = 0; i < 100; i++ )); do
    [ -S "$sock" ] && [ -s "$sock.pid" ] && return 0
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$sock.err" >&2
  fail "nbdkit on $sock did not start"
}

# Wait, 20 s at most, for that nbdkit to exit; sets $status to its exit
# status (not in a subshell: only this shell can wait for its child).
wait_nbdkit_exit ()
{
  local i
  status=0
  for (( i = 0; i < 400; i++ )); do
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    # A zombie is gone for our purposes: only "wait" can reap it.
    [[ "$(ps -o stat= -p "$nbdkit_pid" 2>/dev/null)" != Z* ]] || break
    sleep 0.05
  done
  [ $i -lt 400 ] || fail "nbdkit (pid $nbdkit_pid) did not exit"
  # (The redirection keeps bash from reporting "Killed" after kill -9.)
  { wait "$nbdkit_pid"; } 2>/dev/null || status=$?
  # Reaped: its pid may be reused by anything, so never kill it later.
  for i in "${!_cleanup_actions[@]}"; do
    [ "${_cleanup_actions[$i]}" != "kill -9 $nbdkit_pid 2>/dev/null" ] ||
      unset '_cleanup_actions[i]'
  done
  _cleanup_actions=("${_cleanup_actions[@]}")
}

# Stop the daemon whose pid file is PIDFILE with SIGTERM and wait, 20 s
# at most, until it is gone (a daemon is no child of ours: its exit
# status cannot be had).
stop_daemon ()
{
  local pid i
  pid="$(cat "$1")"
  kill -TERM "$pid"
  for (( i = 0; i < 400; i++ )); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  fail "the daemon (pid $pid) did not stop"
}

# After a crash: start nbdkit with the filter on SOCK (the rest of the
# arguments are nbdkit's), make one writable connection, which starts
# tracking and so recovers the bitmaps, and stop nbdkit cleanly.
# Prints why and returns 1 when nbdkit refuses the connection or does
# not stop cleanly.
restart_after_crash ()
{
  local sock="$1"
  shift
  start_nbdkit_background "$sock" "$@"
  if ! /usr/bin/python3 -m nbd -u "nbd+unix:///?socket=$sock" \
       -c 'h.flush()' 2> "$sock.flush.err"; then
    kill -TERM "$nbdkit_pid" 2>/dev/null || :
    wait_nbdkit_exit
    echo "the restart (exit status $status) refused the connection:" \
         "$(tail -n 3 "$sock.flush.err")"
    echo "it said: $(tail -n 3 "$sock.err")"
    return 1
  fi
  kill -TERM "$nbdkit_pid"
  wait_nbdkit_exit
  if [ "$status" -ne 0 ]; then
    echo "the restart exited with status $status: $(tail -n 3 "$sock.err")"
    return 1
  fi
}

# The control socket of the nbdkit that start_nbdkit_background started
# (dirtybitmap-control="$ctl"): wait until it is there.
wait_control ()
{
  local i
  for (( i = 0; i < 200; i++ )); do
    [ -S "$ctl" ] && return 0
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$sock.err" >&2
  fail "no control socket at $ctl"
}

# Run QMP commands (tests/helpers/qmp.py syntax) on "$ctl"; each must
# return {}.
qmp_ok ()
{
  local out
  out="$(/usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" "$@")"
  [ "$out" = "$(printf '{"return":{}}\n%.0s' $(seq $(( $# / 2 ))))" ] ||
    fail "qmp $*: $out"
}

# Write the "offset length" lines of RANGES to "$uri", filled with the
# byte FILL (default "w").
write_ranges ()
{
  RANGES="$1" FILL="${2:-w}" nbdsh_script "$uri" <<'EOF'
import os
fill = os.environ["FILL"].encode()
for line in os.environ["RANGES"].split("\n"):
    offset, length = map(int, line.split())
    h.pwrite(fill * length, offset)
EOF
}

# The view tests' server: nbdkit with the filter on a memory disk of
# SIZE (the first argument), serving on "$sock" with the sidecar
# "$tmpdir/sidecar.qcow2" and the control socket "$ctl"; the other
# arguments are the filter's.  Returns once the control socket is up.
start_with_control ()
{
  local size="$1"
  shift
  start_nbdkit_background "$sock" memory "$size" \
    dirtybitmap-file="$tmpdir/sidecar.qcow2" dirtybitmap-control="$ctl" "$@"
  wait_control
}

# Stop that nbdkit with SIGTERM; it must exit 0.
stop_cleanly ()
{
  kill -TERM "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] ||
    fail "nbdkit exited with status $status: $(tail -n 3 "$sock.err")"
}

# Start nbdkit with the filter as a daemon, as users run it: nbdkit
# forks into the background, writes the pid file SOCK.pid and serves on
# the Unix socket SOCK; the rest of the arguments are nbdkit's.  Waits
# until it serves and sets $nbdkit_pid to the daemon's pid (not a child
# of this shell: wait_nbdkit_exit cannot reap it, kill9_daemon stops it).
start_nbdkit_daemon ()
{
  local sock="$1" i
  shift
  nbdkit -U "$sock" -P "$sock.pid" --filter="$FILTER" "$@"
  for (( i = 0; i < 100; i++ )); do
    [ -S "$sock" ] && [ -s "$sock.pid" ] && break
    sleep 0.05
  done
  [ -S "$sock" ] && [ -s "$sock.pid" ] ||
    fail "nbdkit did not start as a daemon on $sock"
  nbdkit_pid="$(cat "$sock.pid")"
  cleanup_fn "kill -9 $nbdkit_pid 2>/dev/null"
}

# kill -9 the daemon that start_nbdkit_daemon started, and wait until
# it is gone.
kill9_daemon ()
{
  local i
  kill -9 "$nbdkit_pid"
  for (( i = 0; i < 100; i++ )); do
    kill -0 "$nbdkit_pid" 2>/dev/null || return 0
    sleep 0.05
  done
  fail "nbdkit (pid $nbdkit_pid) survived kill -9"
}
