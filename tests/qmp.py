#!/usr/bin/python3
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
    def __init__(self, path, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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

    def close(self):
        self.sock.close()


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
