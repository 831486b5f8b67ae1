#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# With nbdkit -r the sidecar is never touched: an existing one (holding
# a stored bitmap) is byte-identical after a read-only run in which a
# client read data and tried to write, and a missing one is not created.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires cmp

disk="$tmpdir/disk.img"
sidecar="$tmpdir/sidecar.qcow2"
size=$((8 * 1024 * 1024))
truncate -s $size "$disk"

# A first, normal run stores bitmap b.
nbdkit_filter -U - file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c 'h.pwrite(b\"hello\", 1048576)'"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "first run: flags of 'b' are '$(bitmap_flags "$sidecar" b)'"
assert_map "$sidecar" b "1048576 65536"
cp "$sidecar" "$tmpdir/sidecar.orig"

# The read-only client: reads the data, every kind of write fails
# (client-side checks off, so that the server itself refuses).
cat > "$tmpdir/client.py" <<'EOF'
assert h.is_read_only(), "the export is not read-only"
assert h.pread(5, 1048576) == b"hello", "read the wrong data"
h.set_strict_mode(0)
for name, op in [("pwrite", lambda: h.pwrite(b"x" * 512, 0)),
                 ("zero", lambda: h.zero(512, 4096)),
                 ("trim", lambda: h.trim(512, 8192))]:
    try:
        op()
    except nbd.Error as e:
        print(name, "refused:", e)
    else:
        raise SystemExit(name + " succeeded on a read-only export")
assert h.pread(512, 0) == bytes(512), "the write changed the disk"
h.flush()
EOF

nbdkit_filter -r -U - file "$disk" dirtybitmap-file="$sidecar" dirtybitmap=b \
  --run "
    /usr/bin/python3 -m nbd -u \"\$uri\" -c \"\$(cat '$tmpdir/client.py')\" &&
    qemu-img info -U --output=json '$sidecar' > '$tmpdir/running.json'
  " > "$tmpdir/client.out" || {
  cat "$tmpdir/client.out" >&2
  fail "the read-only client failed"
}
cat "$tmpdir/client.out"
[ "$(grep -c refused "$tmpdir/client.out")" -eq 3 ] ||
  fail "the read-only client did not see its 3 writes refused"
if grep -q '"in-use"' "$tmpdir/running.json"; then
  fail "the bitmap was marked in use during the read-only run"
fi
cmp "$sidecar" "$tmpdir/sidecar.orig" ||
  fail "the read-only run changed the sidecar"
qemu_check "$sidecar"
[ "$(bitmap_flags "$sidecar" b)" = "auto 65536" ] ||
  fail "after -r: flags of 'b' are '$(bitmap_flags "$sidecar" b)'"
assert_map "$sidecar" b "1048576 65536"

# -r and a missing sidecar: the client reads, nothing is created.
missing="$tmpdir/missing.qcow2"
nbdkit_filter -r -U - file "$disk" dirtybitmap-file="$missing" dirtybitmap=b \
  --run "/usr/bin/python3 -m nbd -u \"\$uri\" -c \"\$(cat '$tmpdir/client.py')\"" \
  > "$tmpdir/client.out" || {
  cat "$tmpdir/client.out" >&2
  fail "missing sidecar: the read-only client failed"
}
[ "$(grep -c refused "$tmpdir/client.out")" -eq 3 ] ||
  fail "missing sidecar: the client did not see its 3 writes refused"
[ ! -e "$missing" ] || fail "a read-only run created $missing"
[ -z "$(ls -A "$tmpdir" | grep '^missing')" ] ||
  fail "a read-only run left files: $(ls -A "$tmpdir")"
