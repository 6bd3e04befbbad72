"""gunicorn configuration with ormb's settings (src/ormb/server/serve.py) for server_compare.py."""

import socket
import struct

from gunicorn.workers import gthread

gthread.DEFAULT_WORKER_DATA_TIMEOUT = 0.02  # idle connections wait in the event loop, not in a thread


def when_ready(server):  # read/write timeouts that accepted sockets inherit
    for listener in server.LISTENERS:
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            listener.sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", 60, 0))
