#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A minimal QMP client for the tests, on Python's standard library.
#
#   qmp.py SOCKET COMMAND [ARGS-JSON] [COMMAND [ARGS-JSON]]...
#
# connects, negotiates capabilities, runs each command and prints each
# reply on its own line, as compact JSON with sorted keys.  ARGS-JSON,
# when present, is the "arguments" object (a word starting with "{").
# Imported, Client gives the tests finer control.
import json
import socket
import sys


class Client:
    # A reply that takes longer than this fails the test instead of
    # hanging it (socket.timeout, an OSError).
    TIMEOUT = 60

    def __init__(self, path, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.TIMEOUT)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self.read()
        if negotiate:
            reply = self.execute("qmp_capabilities")
            assert reply == {"return": {}}, reply

    def read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, data):
        self.sock.sendall(data)

    def execute(self, command, arguments=None, **extra):
        request = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        request.update(extra)
        self.send_raw(json.dumps(request).encode() + b"\n")
        return self.read()

    def ok(self, command, arguments=None):
        """Run a command that must succeed; return its value."""
        reply = self.execute(command, arguments)
        if "return" not in reply:
            raise AssertionError("%s %s: %s" % (command, arguments, reply))
        return reply["return"]

    def fail(self, command, arguments=None, error_class="GenericError",
             desc=None):
        """Run a command that must fail with ERROR_CLASS (and, if DESC is
        given, a description containing DESC); return the description."""
        reply = self.execute(command, arguments)
        error = reply.get("error")
        if (set(reply) != {"error"} or not isinstance(error, dict) or
                set(error) != {"class", "desc"} or
                error["class"] != error_class or
                not isinstance(error["desc"], str) or
                (desc is not None and desc not in error["desc"])):
            raise AssertionError("%s %s: expected %s%s, got %s" % (
                command, arguments, error_class,
                "" if desc is None else " with '%s'" % desc, reply))
        return error["desc"]

    def close(self):
        self.sock.close()


def expected_extents(ranges, granularity, size):
    """The dirty ranges, as [[offset, length], ...], of a bitmap of
    GRANULARITY that recorded the requests RANGES ([(offset, length),
    ...]) on a disk of SIZE bytes: whole granules, adjacent ones merged,
    the last one ending at SIZE."""
    granules = set()
    for offset, length in ranges:
        granules.update(range(offset // granularity,
                              (offset + length - 1) // granularity + 1))
    out = []
    for g in sorted(granules):
        start, end = g * granularity, min((g + 1) * granularity, size)
        if out and out[-1][0] + out[-1][1] == start:
            out[-1][1] = end - out[-1][0]
        else:
            out.append([start, end - start])
    return out


def all_extents(client, name, offset=0, length=None):
    """Every dirty range of bitmap NAME in the window, as [[offset, length],
    ...], following "next" from page to page and merging adjacent
    ranges."""
    out = []
    while True:
        arguments = {"name": name, "offset": offset}
        if length is not None:
            arguments["length"] = length
        page = client.ok("x-dirtybitmap-extents", arguments)
        for e in page["extents"]:
            if out and out[-1][0] + out[-1][1] == e["offset"]:
                out[-1][1] += e["length"]
            else:
                out.append([e["offset"], e["length"]])
        if page["next"] is None:
            return out
        if length is not None:
            length -= page["next"] - offset
        offset = page["next"]


def dumps(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def main():
    client = Client(sys.argv[1])
    words = sys.argv[2:]
    while words:
        command = words.pop(0)
        arguments = None
        if words and words[0].startswith("{"):
            arguments = json.loads(words.pop(0))
        print(dumps(client.execute(command, arguments)))
    client.close()


if __name__ == "__main__":
    main()
