"""Which production HTTP server should serve the embedded registry?  Measured side by side.

    python bench/server_compare.py --python /path/to/venv/bin/python [--size-mib 512] [--runs 2]

The venv given with --python must have the candidates installed (gunicorn, cheroot, waitress,
granian, uvicorn + httptools + uvloop, hypercorn).  Each candidate serves the same tiny
application (WSGI, or ASGI for uvicorn/hypercorn; `bench/server_compare_app.py`): ``GET /v2/``
answers ``{}``, ``PUT /up`` streams the body through SHA-256 in 1 MiB reads, ``GET /blob``
sends a file (``wsgi.file_wrapper``; 1 MiB body messages under ASGI).  Then, against the
real process on 127.0.0.1:

- TLS: a TCP client connects to the TLS port and sends nothing; how long does a ``GET /v2/``
  of another client take?
- 300 idle plain connections are opened; how long does a new client's ``GET /v2/`` take?
- framing: chunk sizes ``-1`` and ``1_0``, ``Content-Length: ²`` and ``-1``: the status
  answered (``drop`` = connection closed without an answer);
- ``Expect: 100-continue``: is ``100 Continue`` sent before the body?
- throughput: curl uploads and downloads one blob of --size-mib; MB/s and server CPU seconds.

Prints a markdown table.  The machine's cores are shared: take the medians, compare in one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, tls: bool = False) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            get_root(port, tls, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {port}")


def get_root(port: int, tls: bool, timeout: float = 10) -> float:
    """Seconds for a fresh connection's GET /v2/ (raises on failure)."""
    start = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = sock.recv(4096)
        if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.1 503"):
            raise OSError(f"unexpected answer {data[:40]!r}")
    return time.perf_counter() - start


def raw_status(port: int, request: bytes, timeout: float = 3) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            data = sock.recv(4096)
    except TimeoutError:
        return "hang"
    except OSError:
        return "drop"
    if not data:
        return "drop"
    return data.split(b" ", 2)[1].decode()


def framing(port: int) -> dict[str, str]:
    head = b"PUT /up HTTP/1.1\r\nHost: x\r\n"
    return {
        "chunk -1": raw_status(port, head + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n"),
        "chunk 1_0": raw_status(port, head + b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"),
        "CL ²": raw_status(port, head + "Content-Length: ²\r\n\r\n".encode() + b"ab"),
        "CL -1": raw_status(port, head + b"Content-Length: -1\r\n\r\nab"),
    }


def expect_continue(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        try:
            first = sock.recv(4096)
        except TimeoutError:
            return "no (waits)"
        return "yes" if first.startswith(b"HTTP/1.1 100") else f"no ({first[:12]!r})"


def tls_idle(port: int) -> str:
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        time.sleep(0.2)
        try:
            return f"{get_root(port, True, timeout=15):.2f} s"
        except OSError as exc:
            return f"failed ({type(exc).__name__})"
    finally:
        idle.close()


def many_idle(port: int, count: int = 300) -> str:
    idle = []
    try:
        for _ in range(count):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.2)
        try:
            return f"{get_root(port, False, timeout=30):.2f} s"
        except OSError as exc:
            return f"failed ({type(exc).__name__})"
    finally:
        for s in idle:
            s.close()


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def throughput(port: int, pid: int, blob: Path, runs: int) -> tuple[list[float], list[float], float, float]:
    up, down, up_cpu, down_cpu = [], [], 0.0, 0.0
    size = blob.stat().st_size
    for _ in range(runs):
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-T", str(blob),
                        f"http://127.0.0.1:{port}/up"], check=True)
        up.append(size / MB / (time.perf_counter() - start))
        up_cpu += cpu_seconds(pid) - cpu
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", f"http://127.0.0.1:{port}/blob"], check=True)
        down.append(size / MB / (time.perf_counter() - start))
        down_cpu += cpu_seconds(pid) - cpu
    gib = size / (1 << 30) * runs
    return up, down, up_cpu / gib, down_cpu / gib


def commands(python: str, port: int, tls: tuple[Path, Path] | None) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    cert, key = (str(tls[0]), str(tls[1])) if tls else ("", "")
    bin_dir = Path(python).parent
    gunicorn = [str(bin_dir / "gunicorn"), "-k", "gthread", "-w", "1", "--threads", "16", "-b", bind,
                "--chdir", str(HERE), "server_compare_app:wsgi"] + (["--certfile", cert, "--keyfile", key] if tls else [])
    tuned = [*gunicorn, "-c", str(HERE / "server_compare_gunicorn.py")]
    granian = [str(bin_dir / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--blocking-threads", "16", "--working-dir", str(HERE), "server_compare_app:wsgi"] + \
        (["--ssl-certificate", cert, "--ssl-keyfile", key] if tls else [])
    uvicorn = [str(bin_dir / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(HERE),
               "--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--limit-concurrency", "1000",
               "server_compare_app:asgi"] + (["--ssl-certfile", cert, "--ssl-keyfile", key] if tls else [])
    hypercorn = [str(bin_dir / "hypercorn"), "-b", bind, "--root-path", "", "server_compare_app:asgi"] + \
        (["--certfile", cert, "--keyfile", key] if tls else [])
    cheroot = [python, str(HERE / "server_compare_app.py"), "cheroot", bind, cert, key]
    waitress = [python, str(HERE / "server_compare_app.py"), "waitress", bind, cert, key]
    return {"gunicorn (gthread)": gunicorn, "gunicorn (gthread, ormb's settings)": tuned, "granian (wsgi)": granian, "uvicorn (asgi)": uvicorn,
            "hypercorn (asgi)": hypercorn, "cheroot": cheroot, "waitress": waitress}


def start(argv: list[str], port: int, tls: bool) -> subprocess.Popen[bytes] | None:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    process = subprocess.Popen(argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, tls)
    except RuntimeError:
        process.kill()
        process.wait()
        return None
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ormb-servers-"))
    sys.path.insert(0, str(HERE.parent / "tests"))
    from registries import self_signed

    tls = self_signed(work, "localhost", ["localhost"], ["127.0.0.1"])
    blob = work / "blob"
    with open(blob, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1 << 20))
    os.environ["SERVER_COMPARE_BLOB"] = str(blob)
    rows = []
    for name in commands(args.python, 0, None):
        if args.only and args.only not in name:
            continue
        row: dict[str, str] = {"server": name}
        port = free_port()
        process = start(commands(args.python, port, tls)[name], port, True)
        row["idle TLS client: other GET"] = tls_idle(port) if process else "no TLS"
        if process:
            process.terminate()
            process.wait(15)
        port = free_port()
        process = start(commands(args.python, port, None)[name], port, False)
        if process is None:
            row["error"] = "did not start"
            rows.append(row)
            continue
        try:
            row["300 idle conns: new GET"] = many_idle(port)
            row.update(framing(port))
            row["100-continue"] = expect_continue(port)
            up, down, up_cpu, down_cpu = throughput(port, process.pid, blob, args.runs)
            row["upload MB/s"] = f"{statistics.median(up):.0f}"
            row["upload CPU s/GiB"] = f"{up_cpu:.2f}"
            row["download MB/s"] = f"{statistics.median(down):.0f}"
            row["download CPU s/GiB"] = f"{down_cpu:.2f}"
            start_term = time.perf_counter()
            process.terminate()
            process.wait(30)
            row["SIGTERM exit"] = f"{process.returncode} in {time.perf_counter() - start_term:.1f} s"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        rows.append(row)
        print(row, file=sys.stderr)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row.get(k, "") for k in keys) + " |")


if __name__ == "__main__":
    main()
