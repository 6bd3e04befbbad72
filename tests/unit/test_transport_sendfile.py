"""The pieces of a push that go around Python: FileRegion over sendfile(2) and over a TLS-like socket
(pread + sendall), on a socketpair: bytes, waiting when the socket's buffer is full, the timeout, a file that
ends early, and which contents become a region at all."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pytest

from ormb.errors import IntegrityError
from ormb.registry.remote import _file_region
from ormb.registry.transport import FileRegion, _send_read, _sendfile
from ormb.transfer import _ProgressReader


def _receive(sock: socket.socket, out: list[bytes]) -> None:
    while data := sock.recv(1 << 16):
        out.append(data)


@pytest.mark.parametrize("send", [_sendfile, _send_read])
def test_a_region_arrives_whole_however_full_the_socket_gets(tmp_path: Path, send: object) -> None:
    data = os.urandom((9 << 20) + 7)  # more than a socket buffer and a sendfile piece
    path = tmp_path / "blob"
    path.write_bytes(data)
    sender, receiver = socket.socketpair()
    sender.settimeout(10)  # what urllib3 does: the socket is non-blocking underneath
    received: list[bytes] = []
    thread = threading.Thread(target=_receive, args=(receiver, received))
    thread.start()
    sent: list[int] = []
    with open(path, "rb") as f, sender:
        f.seek(5)  # the region's offset is explicit: the file's position neither counts nor moves
        send(sender, FileRegion(f.fileno(), 100, len(data) - 100, sent.append))  # type: ignore[operator]
        assert f.tell() == 5
    thread.join()
    receiver.close()
    assert b"".join(received) == data[100:] and sum(sent) == len(data) - 100


@pytest.mark.parametrize("send", [_sendfile, _send_read])
def test_a_file_shorter_than_its_region_is_an_integrity_error(tmp_path: Path, send: object) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 1000)
    sender, receiver = socket.socketpair()
    with open(path, "rb") as f, sender, receiver:
        with pytest.raises(IntegrityError, match="the local content ended 24 bytes early"):
            send(sender, FileRegion(f.fileno(), 0, 1024))  # type: ignore[operator]


def test_a_peer_that_stops_reading_times_the_send_out(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(32 << 20))
    sender, receiver = socket.socketpair()
    sender.settimeout(0.3)
    with open(path, "rb") as f, sender, receiver, pytest.raises(TimeoutError):
        _sendfile(sender, FileRegion(f.fileno(), 0, 32 << 20))


class _NoProgress:
    def start(self, task: str, description: str, total: int | None) -> None: ...
    def advance(self, task: str, amount: int) -> None: ...
    def finish(self, task: str) -> None: ...


def test_only_a_regular_file_from_where_it_stands_becomes_a_region(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as f:
        f.read(3)
        reader = _ProgressReader(f, _NoProgress(), "t")
        region = _file_region(reader, 7)
        assert region is not None and (region.fd, region.offset, region.count) == (f.fileno(), 3, 7)
    assert _file_region(io.BytesIO(b"abc"), 3) is None  # fileno() raises
    assert _file_region(_ProgressReader(io.BytesIO(b"abc"), _NoProgress(), "t"), 3) is None
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe, open(write_end, "wb"):
        assert _file_region(pipe, 3) is None  # not seekable, not a regular file
