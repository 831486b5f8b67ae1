#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The control socket speaks QMP's wire protocol: the greeting, the
# capabilities negotiation, "id" echoed, errors for unknown commands,
# malformed or non-object input, unknown, mistyped or missing
# arguments, each followed by a working connection; the socket's mode,
# any number of clients at once, a client that leaves in the middle of
# a command; the socket file replaced when stale, refused when it is
# not a socket, removed at exit.
source "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires stat

sidecar="$tmpdir/sidecar.qcow2"
sock="$tmpdir/nbd.sock"
ctl="$tmpdir/ctl"
size=$((16 * 1024 * 1024))
export PYTHONPATH="$abs_top_srcdir/tests/helpers"

# The control socket appears just after nbdkit's own.  (A stale socket
# may be at its path before: wait until it accepts a connection.)
wait_control ()
{
  local i
  for (( i = 0; i < 200; i++ )); do
    /usr/bin/python3 -c '
import socket, sys
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sys.argv[1])' \
      "$ctl" 2>/dev/null && return 0
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$sock.err" >&2
  fail "no control socket at $ctl"
}

start ()
{
  start_nbdkit_background "$sock" memory $size \
    dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl"
  wait_control
}

stop ()
{
  kill -TERM "$nbdkit_pid"
  wait_nbdkit_exit
  [ "$status" -eq 0 ] || { cat "$sock.err" >&2; fail "nbdkit exited $status"; }
}

# A stale socket (bound, then its listener gone) is replaced at start.
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.close()' "$ctl"
[ -S "$ctl" ] || fail "could not make a stale socket"
start

[ "$(stat -c %a "$ctl")" = 600 ] ||
  fail "the control socket's mode is $(stat -c %a "$ctl"), not 600"

/usr/bin/python3 - "$ctl" "nbd+unix:///?socket=$sock" <<'EOF'
import json, socket, sys, threading
import nbd
from qmp import Client

ctl, uri = sys.argv[1], sys.argv[2]

def check(what, actual, expected):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))

def error_of(reply, error_class, id_=None, has_id=False):
    """The desc of an error reply of ERROR_CLASS (with "id" ID_)."""
    keys = {"error", "id"} if has_id else {"error"}
    check("keys of %r" % reply, set(reply), keys)
    check("error keys of %r" % reply, set(reply["error"]), {"class", "desc"})
    check("error class of %r" % reply, reply["error"]["class"], error_class)
    if has_id:
        check("id of %r" % reply, reply["id"], id_)
    assert isinstance(reply["error"]["desc"], str) and reply["error"]["desc"]
    return reply["error"]["desc"]

def send(c, data):
    c.send_raw(data)
    return c.read()

# The greeting, QEMU's shape: no capability is offered.
c = Client(ctl, negotiate=False)
g = c.greeting
check("greeting keys", set(g), {"QMP"})
check("QMP keys", set(g["QMP"]), {"version", "capabilities"})
check("capabilities", g["QMP"]["capabilities"], [])
v = g["QMP"]["version"]
check("version keys", set(v), {"qemu", "package"})
check("qemu version keys", set(v["qemu"]), {"major", "minor", "micro"})
assert all(type(v["qemu"][k]) is int for k in v["qemu"]), v
assert isinstance(v["package"], str), v

# Before negotiation, every other command is CommandNotFound.
error_of(c.execute("query-dirty-bitmaps", id=1), "CommandNotFound", 1, True)
error_of(c.execute("block-dirty-bitmap-add", {"name": "early"}),
         "CommandNotFound")
# Negotiation: no capability can be enabled; then it works.
error_of(c.execute("qmp_capabilities", {"enable": ["oob"]}), "GenericError")
error_of(c.execute("qmp_capabilities", {"bogus": 1}), "GenericError")
check("negotiation", c.execute("qmp_capabilities", id="n"),
      {"return": {}, "id": "n"})
error_of(c.execute("qmp_capabilities"), "CommandNotFound")
check("no bitmap added before negotiation", c.ok("query-dirty-bitmaps"), [])

# "id" is echoed whatever its type, on success and on error.
for id_ in (7, -3, 2**53, 1.5, "abc", "", {"a": [1, {"b": None}]}, [1, "x"],
            True, None):
    check("reply with id %r" % (id_,), c.execute("query-dirty-bitmaps", id=id_),
          {"return": [], "id": id_})
    error_of(c.execute("no-such-command", id=id_), "CommandNotFound", id_, True)
    error_of(c.execute("block-dirty-bitmap-remove", {"name": "nope"}, id=id_),
             "GenericError", id_, True)
# Without "id", no "id" in the reply.
check("reply without id", c.execute("query-dirty-bitmaps"), {"return": []})

# Unknown command.
desc = error_of(c.execute("query-block"), "CommandNotFound")
assert "query-block" in desc, desc

# Malformed JSON: an error, then the next command on the connection works,
# whether it comes in the same packet or later.
for bad in (b'{"execute": "query-dirty-bitmaps",,}\n',
            b'{"execute": query-dirty-bitmaps}\n',
            b'}\n',
            b"{'execute': 'query-dirty-bitmaps'}\n",
            b'{"execute": "query-dirty-bitmaps", "id": NaN}\n',
            b'\xff\xfe{}\n'):
    desc = error_of(send(c, bad), "GenericError")
    check("after %r" % bad, c.execute("query-dirty-bitmaps", id=1),
          {"return": [], "id": 1})
c.send_raw(b'{"execute": "query-dirty-bitmaps" "x"}\n'
           b'{"execute": "query-dirty-bitmaps", "id": 2}\n')
error_of(c.read(), "GenericError")
check("same packet", c.read(), {"return": [], "id": 2})
# A command split into pieces, and two commands in one piece.
for piece in (b'{"exec', b'ute": "query-dirty-', b'bitmaps", "id"', b': 3}\n'):
    c.send_raw(piece)
check("pieces", c.read(), {"return": [], "id": 3})
c.send_raw(b'{"execute": "query-dirty-bitmaps", "id": 4}'
           b'{"execute": "query-dirty-bitmaps", "id": 5}\n')
check("first of two", c.read(), {"return": [], "id": 4})
check("second of two", c.read(), {"return": [], "id": 5})

# Input that is JSON but not a command object.
for bad in (b'[1, 2]\n', b'"query-dirty-bitmaps"\n', b'42\n', b'null\n',
            b'true\n', b'{}\n', b'{"arguments": {}}\n',
            b'{"execute": 1}\n', b'{"execute": null}\n',
            b'{"execute": "query-dirty-bitmaps", "arguments": []}\n',
            b'{"execute": "query-dirty-bitmaps", "arguments": "x"}\n',
            b'{"execute": "query-dirty-bitmaps", "bogus": 1}\n',
            b'{"exec-oob": "query-dirty-bitmaps"}\n'):
    error_of(send(c, bad), "GenericError")
    check("after %r" % bad, c.execute("query-dirty-bitmaps", id=6),
          {"return": [], "id": 6})

# Arguments: unknown, of the wrong type, missing.  None has an effect.
def generic(command, arguments, *texts):
    desc = c.fail(command, arguments)
    for text in texts:
        if text not in desc:
            raise AssertionError("%s %s: %r does not say %r"
                                 % (command, arguments, desc, text))

generic("block-dirty-bitmap-add", {"name": "x", "bogus": 1},
        "unexpected argument 'bogus'")
generic("query-dirty-bitmaps", {"name": "x"}, "unexpected argument 'name'")
generic("x-dirtybitmap-store", {"force": True}, "unexpected argument 'force'")
generic("block-dirty-bitmap-remove", {"name": "x", "granularity": 4096},
        "unexpected argument 'granularity'")
generic("block-dirty-bitmap-add", {"name": 5}, "'name' must be a string")
generic("block-dirty-bitmap-add", {"name": None}, "'name' must be a string")
generic("block-dirty-bitmap-add", {"name": "x", "granularity": "4096"},
        "'granularity' must be a", "integer")
generic("block-dirty-bitmap-add", {"name": "x", "granularity": 4096.0},
        "'granularity' must be a", "integer")
generic("block-dirty-bitmap-add", {"name": "x", "persistent": "yes"},
        "'persistent' must be a boolean")
generic("block-dirty-bitmap-add", {"name": "x", "disabled": 1},
        "'disabled' must be a boolean")
generic("block-dirty-bitmap-add", {"name": "x", "node": 0},
        "'node' must be a string")
generic("block-dirty-bitmap-merge", {"target": "x", "bitmaps": "y"},
        "'bitmaps' must be a", "array")
generic("x-dirtybitmap-extents", {"name": "x", "offset": "0"},
        "'offset' must be a", "integer")
generic("transaction", {"actions": {}}, "'actions' must be a", "array")
generic("block-dirty-bitmap-add", {}, "missing argument 'name'")
generic("block-dirty-bitmap-add", {"granularity": 4096},
        "missing argument 'name'")
generic("block-dirty-bitmap-clear", {}, "missing argument 'name'")
generic("block-dirty-bitmap-merge", {"bitmaps": []}, "missing argument 'target'")
generic("block-dirty-bitmap-merge", {"target": "x"}, "missing argument 'bitmaps'")
generic("x-dirtybitmap-extents", {}, "missing argument 'name'")
generic("transaction", {}, "missing argument 'actions'")
check("nothing added by refused commands", c.ok("query-dirty-bitmaps"), [])

# Several clients at once, each adding, querying and removing bitmaps
# of its own, while this one writes through the export.
c.ok("block-dirty-bitmap-add", {"name": "rec"})
h = nbd.NBD()
h.connect_uri(uri)
errors = []
ROUNDS = 20

def worker(i):
    try:
        w = Client(ctl)
        for r in range(ROUNDS):
            name = "t%d-%d" % (i, r)
            w.ok("block-dirty-bitmap-add",
                 {"name": name, "granularity": 4096 << (r % 4),
                  "disabled": r % 2 == 1})
            mine = [b for b in w.ok("query-dirty-bitmaps")
                    if b["name"] == name]
            check("own bitmap of client %d" % i, mine,
                  [{"name": name, "granularity": 4096 << (r % 4),
                    "recording": r % 2 == 0, "persistent": False,
                    "inconsistent": False, "busy": False,
                    "count": mine[0]["count"] if mine else 0}])
            w.ok("block-dirty-bitmap-remove", {"name": name})
            w.fail("block-dirty-bitmap-remove", {"name": name},
                   desc="no bitmap named '%s'" % name)
        w.close()
    except BaseException as e:
        errors.append("client %d: %r" % (i, e))

threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
written = []
for k in range(64):
    h.pwrite(b"w" * 100, k * 65536 * 2 + 1000)
    written.append((k * 65536 * 2 + 1000, 100))
for t in threads:
    t.join()
if errors:
    raise AssertionError("; ".join(errors))
check("after the clients", c.ok("query-dirty-bitmaps"),
      [{"name": "rec", "granularity": 65536, "recording": True,
        "persistent": False, "inconsistent": False, "busy": False,
        "count": 64 * 65536}])

# A client that leaves in the middle of a command disturbs nobody.
other = Client(ctl)
half = Client(ctl)
half.send_raw(b'{"execute": "block-dirty-bitmap-add", '
              b'"arguments": {"name": "half"')
half.close()
half = Client(ctl, negotiate=False)
half.send_raw(b'{"execute": "qmp_capabilities"}\n'
              b'{"execute": "block-dirty-bitmap-add", "argu')
half.sock.shutdown(socket.SHUT_WR)
check("negotiated before leaving", half.read(), {"return": {}})
try:
    extra = half.read()
    raise AssertionError("reply to half a command: %r" % extra)
except EOFError:
    pass
half.close()
# Nor does one sending an endless object: an error, then it is closed.
big = Client(ctl)
try:
    big.send_raw(b'{"execute": "query-dirty-bitmaps", "arguments": {"x": "'
                 + b"a" * (2 * 1024 * 1024))
except OSError:
    pass                          # closed while sending: fine
try:
    desc = error_of(big.read(), "GenericError")
    assert "too long" in desc, desc
    big.read()
    raise AssertionError("still connected after endless input")
except (EOFError, ConnectionResetError):
    pass
big.close()
h.pwrite(b"x", 5 * 65536 * 2 + 65536)    # a clean granule of "rec"
h.zero(3 * 65536, 128 * 65536)           # granules 128..130
h.trim(65536, 131 * 65536)               # granule 131
for cl in (c, other):
    check("after the half command",
          [(b["name"], b["count"]) for b in cl.ok("query-dirty-bitmaps")],
          [("rec", 69 * 65536)])
h.shutdown()
other.close()
c.close()
EOF

# nbdsh writes are still served and recorded after all that.
nbdsh_script "nbd+unix:///?socket=$sock" <<'EOF'
h.pwrite(b"y" * 65536, 7 * 65536)
assert h.pread(1, 7 * 65536) == b"y"
EOF
[ "$(/usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" \
       query-dirty-bitmaps)" = \
  '{"return":[{"busy":false,"count":'$((70 * 65536))',"granularity":65536,"inconsistent":false,"name":"rec","persistent":false,"recording":true}]}' ] ||
  fail "the nbdsh write was not recorded"

# A second server cannot take a socket that somebody listens on.
status=0
timeout 20 nbdkit -f -U "$tmpdir/nbd2.sock" --filter="$FILTER" memory $size \
     dirtybitmap-file="$tmpdir/sidecar2.qcow2" dirtybitmap-control="$ctl" \
     2> "$tmpdir/second.err" || status=$?
[ "$status" -eq 1 ] ||
  { cat "$tmpdir/second.err" >&2; fail "a second nbdkit on the live control socket exited $status"; }
/usr/bin/python3 "$abs_top_srcdir/tests/helpers/qmp.py" "$ctl" query-dirty-bitmaps |
  grep -q '"name":"rec"' || fail "the live control socket was disturbed"

stop
[ ! -e "$ctl" ] || fail "the control socket is left behind after exit"
qemu_check "$sidecar"

# Anything but a socket at the path: nbdkit refuses to start, and the
# file is left as it was.
echo "not a socket" > "$ctl"
touch -d "2001-02-03 04:05:06" "$ctl"
before="$(stat -c '%a %s %Y %i' "$ctl")"
status=0
timeout 20 nbdkit -f -U "$tmpdir/nbd3.sock" --filter="$FILTER" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl" \
  2> "$tmpdir/file.err" || status=$?
[ "$status" -eq 1 ] ||
  { cat "$tmpdir/file.err" >&2; fail "nbdkit exited $status over a file"; }
grep -q "$ctl" "$tmpdir/file.err" ||
  { cat "$tmpdir/file.err" >&2; fail "the error does not name $ctl"; }
[ "$(cat "$ctl")" = "not a socket" ] && [ -f "$ctl" ] &&
  [ "$(stat -c '%a %s %Y %i' "$ctl")" = "$before" ] ||
  fail "the file at the control path was changed"
# Nor a directory.
rm "$ctl"
mkdir "$ctl"
status=0
timeout 20 nbdkit -f -U "$tmpdir/nbd3.sock" --filter="$FILTER" memory $size \
  dirtybitmap-file="$sidecar" dirtybitmap-control="$ctl" \
  2> "$tmpdir/dir.err" || status=$?
[ "$status" -eq 1 ] && [ -d "$ctl" ] ||
  { cat "$tmpdir/dir.err" >&2; fail "nbdkit exited $status over a directory"; }
# Failing to start left no stray file next to the path.
[ "$(ls -A "$tmpdir" | grep -v -e '^nbd' -e '^sidecar' -e '\.err$' -e '^sanitizer-bin$' |
     tr '\n' ' ')" = "ctl " ] || fail "stray files: $(ls -A "$tmpdir")"
qemu_check "$sidecar"
