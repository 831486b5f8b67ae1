#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A connection that never writes claims no export: with nbdkit -e vda
# as a daemon, a probe (nbdinfo --size) on the default name comes
# first, and the writer to vda is then served and recorded; the file
# plugin with file= serves one disk whatever the name, so a writer to
# the default name is recorded in the same bitmap.  With a plugin that
# serves a disk per name, the writer to a second name is refused with
# the error naming dirtybitmap-export=, and dirtybitmap-export=NAME
# chooses the tracked one.
#
# The plugin with several disks is an eval plugin serving each file of
# a directory (see test-export-names.sh for why not "file dir=": the
# filter opens the default export at start-up, outside any
# connection, where the file plugin in directory mode crashes).
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp dd stat

size=$((4 * 1024 * 1024))

# Start nbdkit as a daemon on $sock; the arguments are nbdkit's.
start_daemon ()
{
  sock="$tmpdir/sock"
  rm -f "$sock" "$sock.pid"
  nbdkit -P "$sock.pid" -U "$sock" --filter="$FILTER" "$@" \
    2> "$sock.err" || { cat "$sock.err" >&2; fail "the daemon did not start"; }
  cleanup_fn "kill -9 $(cat "$sock.pid") 2>/dev/null"
}

# nbdkit in the foreground on $sock (its errors in $sock.err), and its
# stop by SIGTERM.
start_foreground ()
{
  sock="$tmpdir/fg.sock"
  rm -f "$sock" "$sock.pid"
  start_nbdkit_background "$sock" "$@"
}

stop_foreground ()
{
  kill -TERM "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
}

# pwrite at OFFSET to export NAME; prints "ok" or the error.
write_to ()
{
  /usr/bin/python3 - "$sock" "$1" "$2" <<'EOF'
import sys
import nbd
h = nbd.NBD()
h.set_export_name(sys.argv[2])
try:
    h.connect_unix(sys.argv[1])
    h.pwrite(b"w" * 10, int(sys.argv[3]))
    h.shutdown()
    print("ok")
except nbd.Error as e:
    print("refused:", e.string)
EOF
}

# 1. One disk whatever the name (file with file=), nbdkit -e vda.
disk="$tmpdir/disk.img"
sidecar="$tmpdir/disk.qcow2"
truncate -s $size "$disk"
start_daemon -e vda file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b
[ "$(nbdinfo --size "nbd+unix:///?socket=$sock")" = $size ] ||
  fail "the probe did not get the size"
[ "$(write_to vda 65536)" = ok ] || fail "the writer to vda was refused"
[ "$(write_to "" 1048576)" = ok ] ||
  fail "the writer to the default name of the same disk was refused"
stop_daemon "$sock.pid"
[ ! -s "$sock.err" ] || { cat "$sock.err" >&2; fail "nbdkit printed errors"; }
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "b is '$(bitmap_flags "$sidecar" b)'"
assert_map "$sidecar" b "65536 65536
1048576 65536"

# 2. A disk per name (nbdkit in the foreground, whose errors reach
# stderr): the first writer's export is tracked; the writer to another
# is refused, naming the parameter.
dir="$tmpdir/exports"
mkdir "$dir"
truncate -s $size "$dir/A" "$dir/B"
cp "$dir/A" "$tmpdir/A.orig"
cp "$dir/B" "$tmpdir/B.orig"
sidecar="$tmpdir/exports.qcow2"
eval_plugin=( eval
  open="n=\"\${3:-A}\"; [ -f '$dir'/\"\$n\" ] || { echo \"ENOENT no export \$n\" >&2; exit 1; }; echo \"\$n\""
  get_size="stat -Lc %s '$dir'/\"\$2\""
  pread="unset LD_PRELOAD; dd if='$dir'/\"\$2\" skip=\$4 count=\$3 iflag=count_bytes,skip_bytes status=none"
  pwrite="unset LD_PRELOAD; dd of='$dir'/\"\$2\" seek=\$4 conv=notrunc oflag=seek_bytes status=none" )
start_foreground "${eval_plugin[@]}" dirtybitmap-file="$sidecar" dirtybitmap=b
[ "$(nbdinfo --size "nbd+unix:///B?socket=$sock")" = $size ] ||
  fail "the probe of B did not get the size"
# Connected to B before any write, refused at its first write.
out="$(/usr/bin/python3 - "$sock" <<'EOF'
import sys
import nbd
def connect(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sys.argv[1])
    return h
b = connect("B")
a = connect("A")
a.pwrite(b"a" * 10, 65536)
try:
    b.pwrite(b"b" * 10, 65536)
    print("B written")
except nbd.Error as e:
    print("refused:", e.string)
EOF
)"
[[ "$out" = refused:* ]] || fail "the write to B was not refused: $out"
# Connecting to B now that A is tracked: refused as it connects.
out="$(write_to B 65536)"
[[ "$out" = refused:* ]] || fail "the writer to B was not refused: $out"
[ "$(write_to A 1048576)" = ok ] || fail "a second writer to A was refused"
stop_foreground
[ "$(grep -c "is refused" "$sock.err")" -eq 2 ] ||
  { cat "$sock.err" >&2; fail "not two refusals"; }
grep -qF "error: $sidecar tracks export 'A'; export 'B' is refused because its writes would be mixed into the same bitmaps (the tracked export is the first one written to, and the filter cannot tell that this plugin serves the same disk under both names): write through export 'A' only, choose the tracked export with dirtybitmap-export=NAME, or run one nbdkit with its own dirtybitmap-file= per export" "$sock.err" ||
  { cat "$sock.err" >&2; fail "no error naming dirtybitmap-export="; }
cmp "$dir/B" "$tmpdir/B.orig" || fail "export B was changed"
qemu_check "$sidecar"
assert_map "$sidecar" b "65536 65536
1048576 65536"

# 3. dirtybitmap-export=B: B is tracked even though A is written first.
cp "$tmpdir/A.orig" "$dir/A"
rm "$sidecar"
start_foreground "${eval_plugin[@]}" dirtybitmap-file="$sidecar" \
  dirtybitmap=b dirtybitmap-export=B
out="$(write_to A 65536)"
[[ "$out" = refused:* ]] || fail "the writer to A was not refused: $out"
[ "$(write_to B 2097152)" = ok ] || fail "the writer to B was refused"
stop_foreground
grep -qF "error: $sidecar tracks export 'B'; export 'A' is refused because its writes would be mixed into the same bitmaps (the tracked export is set by dirtybitmap-export=" "$sock.err" ||
  { cat "$sock.err" >&2; fail "no error naming dirtybitmap-export="; }
cmp "$dir/A" "$tmpdir/A.orig" || fail "export A was changed"
qemu_check "$sidecar"
assert_map "$sidecar" b "2097152 65536"

# 4. The file plugin's directory mode, the multi-export plugin users
# run: nbdkit starts (the plugin cannot be opened outside a client's
# export name, so the size waits for the first client), a probe of A
# claims nothing, a writer to B is tracked, and a writer to A is then
# refused with the error naming the parameter.
cp "$tmpdir/A.orig" "$dir/A"
cp "$tmpdir/B.orig" "$dir/B"
rm "$sidecar"
start_foreground file dir="$dir" dirtybitmap-file="$sidecar" dirtybitmap=b
[ "$(nbdinfo --size "nbd+unix:///A?socket=$sock")" = $size ] ||
  fail "the probe of A failed"
[ "$(write_to B 65536)" = ok ] || fail "the writer to B was refused"
out="$(write_to A 131072)"
[[ "$out" = refused:* ]] || fail "the writer to A was not refused: $out"
stop_foreground
grep -qF "error: $sidecar tracks export 'B'; export 'A' is refused" "$sock.err" &&
  grep -qF "choose the tracked export with dirtybitmap-export=NAME" "$sock.err" ||
  { cat "$sock.err" >&2; fail "no error naming dirtybitmap-export= (file dir=)"; }
cmp "$dir/A" "$tmpdir/A.orig" || fail "export A was changed"
qemu_check "$sidecar"
assert_map "$sidecar" b "65536 65536"
