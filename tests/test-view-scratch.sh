#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A view's scratch space: made in dirtybitmap-view-scratch=, unlinked
# (nothing in the directory, ever), given back by trims on the view
# (scratch-bytes and the file's allocated blocks, found through
# /proc/PID/fd), and gone with the view.  When a copy cannot be made,
# because of dirtybitmap-view-scratch-limit= or because the scratch
# file cannot be written (a full 1 MiB tmpfs), break-view (the
# default) breaks the view and lets the write through, fail-write
# fails the write (ENOSPC at the limit, EIO for a failed copy) and
# keeps the view.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires mount umount

sock="$tmpdir/sock"
ctl="$tmpdir/ctl"
scratch="$tmpdir/scratch"
mkdir "$scratch" "$tmpdir/full"
if [ "$(id -u)" -ne 0 ] ||
   ! mount -t tmpfs -o size=1M tmpfs "$tmpdir/full" 2>/dev/null; then
  requires mounting-a-tmpfs-as-root
fi
cleanup_fn "umount '$tmpdir/full'"

cat > "$tmpdir/scratch.py" <<'EOF'
import errno, os, sys, time
import nbd
sys.path.insert(0, os.environ["HELPERS_DIR"])
import qmp

case, sock, ctl, pid, scratch = sys.argv[1:]
MiB = 1 << 20
c = qmp.Client(ctl)
live = nbd.NBD()
live.connect_unix(sock)
live.pwrite(b"a" * (8 * MiB), 0)       # the data the view freezes
c.ok("x-dirtybitmap-view-add", {"name": "v"})
view = nbd.NBD()
view.set_export_name("v")
view.connect_unix(sock)


def info():
    views = c.ok("x-dirtybitmap-query-views")
    assert len(views) == 1 and views[0]["name"] == "v", views
    return views[0]


def scratch_files():
    """The scratch files nbdkit holds open: (fd path, allocated bytes)."""
    out = []
    for fd in os.listdir("/proc/%s/fd" % pid):
        path = "/proc/%s/fd/%s" % (pid, fd)
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith(scratch + "/"):
            out.append((target, os.stat(path).st_blocks * 512))
    return out


def write_error(offset, length):
    try:
        live.pwrite(b"b" * length, offset)
    except nbd.Error as e:
        return e.errnum
    return 0


def assert_view_reads_a(offset, length):
    assert view.pread(length, offset) == b"a" * length, offset


if case == "trim":
    files = scratch_files()
    assert len(files) == 1 and files[0][1] == 0, files
    assert os.listdir(scratch) == [], os.listdir(scratch)
    live.pwrite(b"b" * (4 * MiB), 0)
    v = info()
    assert v["copied-bytes"] == v["scratch-bytes"] == 4 * MiB, v
    assert v["frozen-bytes"] == 16 * MiB and v["state"] == "ok", v
    assert 4 * MiB <= scratch_files()[0][1] <= 4 * MiB + 65536, \
        scratch_files()
    assert_view_reads_a(0, 4 * MiB)
    view.trim(3 * MiB, 0)              # "I have read this"
    v = info()
    assert v["scratch-bytes"] == MiB and v["copied-bytes"] == 4 * MiB, v
    assert v["frozen-bytes"] == 13 * MiB, v
    assert MiB <= scratch_files()[0][1] <= MiB + 65536, scratch_files()
    try:
        view.pread(512, 0)
        raise AssertionError("a trimmed range was read")
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, e
    assert_view_reads_a(3 * MiB, MiB)
    live.pwrite(b"c" * MiB, 0)         # released: nothing more to copy
    assert info()["scratch-bytes"] == MiB, info()
    assert os.listdir(scratch) == [], os.listdir(scratch)
    c.ok("x-dirtybitmap-view-remove", {"name": "v"})
    # The file goes with the view, its client still connected.
    for _ in range(100):
        if not scratch_files():
            break
        time.sleep(0.05)
    assert scratch_files() == [], scratch_files()
    try:
        view.pread(512, 4 * MiB)
        raise AssertionError("a removed view served a read")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
elif case in ("limit-break", "full-break"):
    assert write_error(0, 2 * MiB) == 0     # the write goes on
    assert live.pread(2 * MiB, 0) == b"b" * (2 * MiB)
    v = info()
    assert v["state"] == "broken" and v["reason"], v
    try:
        view.pread(512, 4 * MiB)
        raise AssertionError("a broken view served a read")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
    print("%s: broken: %s" % (case, v["reason"]))
else:                                  # limit-fail, full-fail
    err = write_error(0, MiB // 2)     # fits
    assert err == 0, err
    err = write_error(MiB // 2, 2 * MiB)
    want = errno.ENOSPC if case == "limit-fail" else errno.EIO
    assert err == want, (case, err)
    # The failed write reached nothing; the view is whole.
    assert live.pread(2 * MiB, MiB // 2) == b"a" * (2 * MiB)
    v = info()
    assert v["state"] == "ok" and "reason" not in v, v
    assert_view_reads_a(0, 8 * MiB)
    print("%s: the write failed with %s, the view is intact" %
          (case, errno.errorcode[err]))
c.close()
EOF

# run_case CASE SCRATCH-DIR [PARAMETERS...]
run_case ()
{
  local case="$1" dir="$2"
  shift 2
  rm -f "$sock" "$ctl" "$tmpdir/sidecar.qcow2"
  start_with_control 16M dirtybitmap=b dirtybitmap-view-scratch="$dir" "$@"
  HELPERS_DIR="$abs_top_srcdir/tests/helpers" \
    /usr/bin/python3 "$tmpdir/scratch.py" "$case" "$sock" "$ctl" \
      "$nbdkit_pid" "$dir" ||
    fail "case $case: $(tail -n 5 "$sock.err")"
  stop_cleanly
  [ -z "$(ls -A "$dir")" ] || fail "case $case: left $(ls -A "$dir")"
}

run_case trim "$scratch"
run_case limit-break "$scratch" dirtybitmap-view-scratch-limit=1M
run_case limit-fail "$scratch" dirtybitmap-view-scratch-limit=1M \
  dirtybitmap-view-on-error=fail-write
run_case full-break "$tmpdir/full"
run_case full-fail "$tmpdir/full" dirtybitmap-view-on-error=fail-write
