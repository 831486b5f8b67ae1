#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# With a plugin serving several exports, the first export a client
# writes to is the one tracked: a client asking for another
# export is refused with "tracks export 'A'; export 'B' is refused",
# clients of the same export are still served, and the map holds only
# A's writes.  A client whose export the plugin refuses claims nothing.
#
# The plugin is an eval plugin serving each file of a directory as an
# export (handle = export name).  It is not "nbdkit file dir=": at
# start-up the filter opens the default export "" outside any client
# connection, where nbdkit_export_name() is unavailable; the file
# plugin in directory mode then crashes (nbdkit 1.32), and a plugin
# that only knows its default through .default_export cannot open "".
# So here "open" treats a missing or empty name as the default, "A".
# The scripts unset LD_PRELOAD: in a sanitizer build the tests preload
# the sanitizer runtimes into nbdkit, and the eval plugin hands its
# environment, taken before the filter could clean it, to dd.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp dd stat

dir="$tmpdir/exports"
sidecar="$tmpdir/sidecar.qcow2"
size=$((4 * 1024 * 1024))
mkdir "$dir"
head -c $size /dev/urandom > "$dir/A"
head -c $size /dev/urandom > "$dir/B"
cp "$dir/B" "$tmpdir/B.orig"

cat > "$tmpdir/clients.py" <<'EOF'
import sys
import nbd

sock = sys.argv[1]

def connect(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h

# The plugin refuses C: that must not make C the tracked export.
try:
    connect("C")
except nbd.Error:
    pass
else:
    sys.exit("export C does not exist but was served")

a1 = connect("A")
a1.pwrite(b"1" * 10, 65536)

try:
    b = connect("B")
except nbd.Error as e:
    print("B refused:", e)
else:
    b.pwrite(b"2" * 10, 1048576)
    sys.exit("a client was served export B")

# A is still served, on the open connection and on a new one.
a1.pwrite(b"3" * 100, 3 * 1048576 + 5)
a2 = connect("A")
assert a2.pread(10, 65536) == b"1" * 10, "second client of A reads other data"
a2.pwrite(b"4", 2 * 1048576)
a2.shutdown()
a1.shutdown()
EOF

nbdkit_filter -U - eval \
  open="n=\"\${3:-A}\"; [ -f '$dir'/\"\$n\" ] || { echo \"ENOENT no export \$n\" >&2; exit 1; }; echo \"\$n\"" \
  default_export='echo A' \
  list_exports="printf '%s\n' A B" \
  get_size="stat -Lc %s '$dir'/\"\$2\"" \
  pread="unset LD_PRELOAD; dd if='$dir'/\"\$2\" skip=\$4 count=\$3 iflag=count_bytes,skip_bytes status=none" \
  pwrite="unset LD_PRELOAD; dd of='$dir'/\"\$2\" seek=\$4 conv=notrunc oflag=seek_bytes status=none" \
  dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run "timeout 60 /usr/bin/python3 '$tmpdir/clients.py' \"\$unixsocket\"" \
  > "$tmpdir/out" 2> "$tmpdir/err" || {
  cat "$tmpdir/out" "$tmpdir/err" >&2
  fail "the clients failed"
}
cat "$tmpdir/out"

grep -q "^B refused:" "$tmpdir/out" || fail "the client of B was not refused"
grep -qF "error: $sidecar tracks export 'A'; export 'B' is refused" \
  "$tmpdir/err" || {
  cat "$tmpdir/err" >&2
  fail "no 'tracks export 'A'; export 'B' is refused' error"
}
[ "$(grep -c "is refused" "$tmpdir/err")" -eq 1 ] ||
  fail "a client of A was refused too"

cmp "$dir/B" "$tmpdir/B.orig" || fail "export B was changed"
[ "$(dd if="$dir/A" bs=1 skip=65536 count=10 status=none)" = 1111111111 ] ||
  fail "the write to A did not reach A"

qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "flags of 'b' are '$(bitmap_flags "$sidecar" b)'"
assert_map "$sidecar" b "65536 65536
2097152 65536
3145728 65536"
