"""An HTTP server that answers every request at once with a hostile Content-Type (a C1 CSI and a
bidi override), below any MCP: `python raw_http_server.py PORT` (tests only, never shipped)."""

from __future__ import annotations

import socket
import sys

HOSTILE = b"text/\xc2\x9b2J\xc2\x9b31mRED\xe2\x80\xaeevil\x1b[2J"

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + HOSTILE
            + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
