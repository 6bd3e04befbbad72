"""Serving the application: gunicorn in the foreground (the CLI), or as a child process (Python).

gunicorn (gthread worker) was chosen by measurement (bench/README.md, docs/architecture.md): it
does the sockets, TLS handshakes in worker threads, strict HTTP/1.1 framing, ``Expect:
100-continue``, keep-alive, graceful SIGTERM and ``sendfile`` for blob downloads.  Five settings
are ours, each held by a test in tests/integration/test_registry_robustness.py:

- read and write timeouts: ``SO_RCVTIMEO``/``SO_SNDTIMEO`` on the listening sockets, which
  accepted sockets inherit (Linux): a client that stalls mid-request frees its thread;
- gthread's wait for a new connection's first bytes is cut from 5 s to 20 ms, so idle
  connections wait in the event loop, not in the thread pool;
- what gunicorn answers to a request it cannot parse carries the spec's JSON error body;
- a bound on connections (``worker_connections``) and threads; idle ones are closed after
  the keep-alive timeout;
- a bound on requests waiting for a free thread (``--max-waiting``): beyond it a new plain-HTTP
  connection is answered 503 at once (the worker class below), never left hanging.

>>> server = RegistryServer(Path("/tmp/registry"), "127.0.0.1:0").start()   # a child process
>>> server.url                      # http://localhost:PORT, the real port (ormb.server.names)
>>> server.stop()
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ormb.errors import StorageError, UsageError

if TYPE_CHECKING:
    from ormb.server.names import Listening, RegistryNames
    from ormb.signing.keys import PublicKey

LISTENING = "ormb registry listening on "
STOPPED = "ormb registry stopped"
NEW_CONNECTION_WAIT = 0.02  # seconds a worker thread waits for a new connection's first bytes


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise StorageError(f"invalid address {addr!r}", "use HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ServeOptions:
    """Everything ``ormb registry serve`` takes."""

    root: Path
    addr: str = "127.0.0.1:5000"
    htpasswd: Path | None = None
    policy: Path | None = None
    anonymous_pull: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_scheme: str = "bearer"
    ui: bool = True
    workers: int = 1
    threads: int = 32
    max_connections: int = 4000
    max_waiting: int = 256  # requests waiting for a thread; beyond, new connections get 503
    client_timeout: float = 60.0  # a read or write that makes no progress for this long ends the request
    keepalive: float = 15.0  # idle connections are closed after this long
    token_lifetime: int = 300
    log_level: str = "info"
    public_hosts: tuple[str, ...] = ()  # names clients reach the registry by, besides loopback and --addr
    sparse_manifests: bool = False  # accept manifests whose blobs or child manifests were not pushed
    trust_keys: tuple[Path, ...] = ()  # public keys whose signatures the catalog shows as "signed"
    trust_dir: Path | None = None  # a directory of such keys

    def check(self) -> None:
        """Refuse what cannot be served as asked: :class:`~ormb.errors.UsageError` (exit 2)."""
        from ormb.server.access import ANONYMOUS_PULL_WITH_POLICY
        from ormb.server.browser import split_host

        if self.anonymous_pull and self.policy is not None:
            raise ANONYMOUS_PULL_WITH_POLICY
        for name in self.public_hosts:
            if split_host(name) is None:
                raise UsageError(f"--public-host {name[:100]!r} is not a host name", "give a name like models.example.org")
        self.trusted()  # a key file that cannot be used is refused before anything starts

    def trusted(self) -> tuple[PublicKey, ...]:
        """The keys of ``--trust-key``/``--trust-dir`` (none: the catalog shows no "signed" badge)."""
        from ormb.signing.keys import trusted_keys

        if not self.trust_keys and self.trust_dir is None:
            return ()
        return trusted_keys(self.trust_keys, self.trust_dir)

    def argv(self) -> list[str]:
        """The ``ormb registry serve`` arguments for these options."""
        args = ["registry", "serve", "--root", str(self.root), "--addr", self.addr, "--auth-scheme", self.auth_scheme,
                "--workers", str(self.workers), "--threads", str(self.threads), "--max-connections",
                str(self.max_connections), "--max-waiting", str(self.max_waiting), "--client-timeout", str(self.client_timeout), "--keepalive",
                str(self.keepalive), "--token-lifetime", str(self.token_lifetime), "--log-level", self.log_level]
        for flag, value in (("--htpasswd", self.htpasswd), ("--policy", self.policy), ("--tls-cert", self.tls_cert),
                            ("--tls-key", self.tls_key)):
            if value is not None:
                args += [flag, str(value)]
        if self.anonymous_pull:
            args.append("--anonymous-pull")
        if not self.ui:
            args.append("--no-ui")
        for name in self.public_hosts:
            args += ["--public-host", name]
        if self.sparse_manifests:
            args.append("--sparse-manifests")
        for key in self.trust_keys:
            args += ["--trust-key", str(key)]
        if self.trust_dir is not None:
            args += ["--trust-dir", str(self.trust_dir)]
        return args


def registry_names(options: ServeOptions) -> RegistryNames:
    """What the registry calls itself: announced on start, copied by the catalog."""
    from ormb.server.names import RegistryNames

    return RegistryNames.for_address(parse_addr(options.addr)[0], options.public_hosts)


def build_app(options: ServeOptions) -> tuple[Any, Any]:
    """(WSGI app, store) for ``options``."""
    from ormb.server.access import AccessControl, load_htpasswd, load_policy
    from ormb.server.app import create_app
    from ormb.server.browser import BrowserGuard
    from ormb.server.store import Store

    options.check()
    users = load_htpasswd(options.htpasswd) if options.htpasswd else None
    rules = load_policy(options.policy) if options.policy else None
    store = Store(options.root)
    access = AccessControl(users=users, rules=rules, anonymous_pull=options.anonymous_pull, secret=store.secret,
                           token_lifetime=options.token_lifetime, revocations=store.token_generations)
    guard = BrowserGuard.for_address(parse_addr(options.addr)[0], options.public_hosts,
                                     open_registry=access.anonymous_may_act)
    return create_app(store, access, auth_scheme=options.auth_scheme, ui=options.ui, guard=guard,
                      sparse=options.sparse_manifests, names=registry_names(options), trusted_keys=options.trusted(),
                      file_records=store.file_records_dir), store


def serve(options: ServeOptions, on_ready: Callable[[Listening], None], on_stop: Callable[[], None]) -> None:
    """Run the registry in this process until SIGTERM/SIGINT (gunicorn's arbiter and its workers);
    ``on_ready`` hears the name it goes by once it listens (see :mod:`ormb.server.names`)."""
    from gunicorn.app.base import BaseApplication

    os.umask(0o077)  # whatever the registry creates is its own (the store sets modes too)
    _tune_gunicorn()
    _raise_open_files_limit(options.max_connections * options.workers + 256)
    host, port = parse_addr(options.addr)
    app, store = build_app(options)
    names = registry_names(options)
    _configure_logging(options.log_level)
    tls = options.tls_cert is not None
    timeout = struct.pack("ll", int(options.client_timeout), int(options.client_timeout % 1 * 1_000_000))

    def when_ready(arbiter: Any) -> None:
        for listener in arbiter.LISTENERS:
            listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        bound = arbiter.LISTENERS[0].sock.getsockname()
        on_ready(names.listening(str(bound[0]).partition("%")[0], int(bound[1]), tls=tls))

    def post_fork(arbiter: Any, worker: Any) -> None:
        store.after_fork()

    def post_worker_init(worker: Any) -> None:
        logging.getLogger("gunicorn.error").addFilter(_quiet_client_timeouts)

    settings: dict[str, Any] = {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "worker_class": _worker_class(options.max_waiting), "workers": options.workers, "threads": options.threads,
        "worker_connections": options.max_connections, "keepalive": max(1, round(options.keepalive)),
        "graceful_timeout": 30, "timeout": 120, "proc_name": "ormb-registry",
        "accesslog": None, "errorlog": "-", "loglevel": "warning" if options.log_level != "debug" else "debug",
        "control_socket_disable": True, "when_ready": when_ready, "post_fork": post_fork, "post_worker_init": post_worker_init,
        "on_exit": lambda arbiter: on_stop(),
    }
    if tls:
        settings["certfile"], settings["keyfile"] = str(options.tls_cert), str(options.tls_key)

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Gunicorn().run()


def _raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit (often 1024) towards ``wanted``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


BUSY = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "the registry is busy; try again shortly",
                               "detail": None}]}).encode()
BUSY_ANSWER = (f"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
               f"Content-Type: application/json\r\nDocker-Distribution-API-Version: registry/2.0\r\n"
               f"Content-Length: {len(BUSY)}\r\n\r\n").encode() + BUSY


def _worker_class(max_waiting: int) -> type:
    """gthread's worker, plus a bound on connections waiting for a thread: beyond ``max_waiting``, a new
    plain-HTTP connection is answered 503 by the event loop and closed (a TLS one waits: no handshake yet)."""
    import threading

    from gunicorn.workers.gthread import ThreadWorker

    class Worker(ThreadWorker):  # type: ignore[misc]
        def init_process(self) -> None:
            self._waiting = 0
            self._waiting_lock = threading.Lock()
            super().init_process()

        def enqueue_req(self, conn: Any) -> None:
            with self._waiting_lock:
                busy = self._waiting >= max_waiting
                if not busy:
                    self._waiting += 1
            if busy and not conn.initialized and not self.cfg.is_ssl:
                try:
                    conn.sock.setblocking(False)
                    conn.sock.send(BUSY_ANSWER)
                except OSError:
                    pass
                self.nr_conns -= 1
                conn.close()
                return
            if busy:
                with self._waiting_lock:
                    self._waiting += 1
            super().enqueue_req(conn)

        def handle(self, conn: Any) -> Any:
            with self._waiting_lock:
                self._waiting -= 1
            return super().handle(conn)

    return Worker


def _tune_gunicorn() -> None:
    """The two module-level settings gunicorn has no option for (see the module doc)."""
    from gunicorn import util
    from gunicorn.workers import gthread

    gthread.DEFAULT_WORKER_DATA_TIMEOUT = NEW_CONNECTION_WAIT
    util.write_error = _write_spec_error


def _write_spec_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's answer to a request it could not parse (bad framing, headers): the spec's JSON error body."""
    from gunicorn import util

    code = "UNKNOWN" if status >= 500 else "UNSUPPORTED"
    body = json.dumps({"errors": [{"code": code, "message": f"{reason}: {message}"[:500], "detail": None}]}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def _quiet_client_timeouts(record: logging.LogRecord) -> bool:
    """A client that stalls before its request is complete is cut off by the socket timeout; gunicorn
    logs that with a traceback: make it one line."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, (BlockingIOError, TimeoutError)):
        record.msg, record.args, record.exc_info, record.exc_text = "a client stalled and was cut off", (), None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("ormb.registry")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


class RegistryServer:
    """``ormb registry serve`` as a child process, for tests and notebooks; ``addr`` may use port 0.

    Takes the fields of :class:`ServeOptions` as keyword arguments.  The process's log (the access
    log included) goes to ``log_path``.
    """

    def __init__(self, root: Path, addr: str = "127.0.0.1:5000", *, log_path: Path | None = None,
                 **options: Any) -> None:
        self.options = ServeOptions(Path(root), addr, **options)
        self.log_path = log_path
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.url.partition("://")[2]

    @property
    def port(self) -> int:
        return int(self.host.rpartition(":")[2])

    def start(self, timeout: float = 30) -> RegistryServer:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="ormb-registry-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log = open(self.log_path, "ab")
        start = self.log_path.stat().st_size
        self.process = subprocess.Popen([sys.executable, "-m", "ormb", *self.options.argv()], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if LISTENING in line:
                    self.url = line.split(LISTENING, 1)[1].split()[0]
                    return self
            if self.process.poll() is not None:
                raise StorageError(f"ormb registry serve exited: {text[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise StorageError(f"ormb registry serve did not start within {timeout} s")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)
