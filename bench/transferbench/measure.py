"""Run one command and measure what it cost: wall time, CPU time of its whole process tree, peak RSS.

CPU: ``os.wait4`` on ``/usr/bin/time``, which itself waits for the command, so the rusage covers the command
and every descendant it reaped (threads included), with microsecond resolution.
RSS: ``/usr/bin/time %M`` of the command, not ``wait4``'s ``ru_maxrss``: a child forked from this (large)
Python process can report the parent's pre-exec high-water mark as its own.

Between measurements :func:`drop_pages` writes everything back (``sync``) and drops the page cache of the
files a run wrote or read, so no run starts with another run's bytes in memory or in write-back.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DROP_MODES = ("fadvise", "global", "none")


class CommandFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    user_s: float
    sys_s: float
    rss_mib: float
    server_cpu_s: float | None = None
    machine_busy_s: float | None = None  # CPU time the whole machine spent (all processes, all cores)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def __add__(self, other: Measurement) -> Measurement:
        """Two commands one after the other (for operations a tool does in two steps)."""
        def add(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a + b

        return Measurement(self.wall_s + other.wall_s, self.user_s + other.user_s, self.sys_s + other.sys_s,
                           max(self.rss_mib, other.rss_mib), add(self.server_cpu_s, other.server_cpu_s),
                           add(self.machine_busy_s, other.machine_busy_s))

    @property
    def others_cores(self) -> float | None:
        """How many cores everything else on the machine kept busy meanwhile (other users' tests): noise."""
        if self.machine_busy_s is None:
            return None
        return max(0.0, self.machine_busy_s - self.cpu_s - (self.server_cpu_s or 0.0)) / self.wall_s


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU of a running process (the registry), from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle and I/O wait since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 server_pid: int | None = None, stdout: Path | None = None) -> Measurement:
    """Run ``cmd`` to completion under /usr/bin/time; raise :class:`CommandFailed` if it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file, \
            tempfile.TemporaryFile("w+b") as err, \
            open(stdout or os.devnull, "wb") as out:
        server_before = process_cpu_seconds(server_pid) if server_pid else None
        busy_before = machine_busy_seconds()
        start = time.perf_counter()
        process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd],
                                   env=dict(env) if env is not None else None, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        busy = machine_busy_seconds() - busy_before
        process.returncode = os.waitstatus_to_exitcode(status)
        server_after = process_cpu_seconds(server_pid) if server_pid else None
        if process.returncode != 0:
            err.seek(0)
            raise CommandFailed(f"{' '.join(cmd)} exited {process.returncode}: {err.read().decode()[-3000:]}")
        rss_text = rss_file.read().split()
    server = server_after - server_before if server_before is not None and server_after is not None else None
    return Measurement(wall, usage.ru_utime, usage.ru_stime, int(rss_text[-1]) / 1024, server, busy)


def files_under(roots: Iterable[Path]) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for directory, _, names in os.walk(root):
                for name in names:
                    yield Path(directory, name)


def drop_pages(roots: Iterable[Path], mode: str) -> None:
    """Write everything back, then make the kernel forget the pages of every file under ``roots``.

    ``fadvise``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file (clean pages only, hence ``sync``
    first); other users' files keep their cache, which matters on a shared machine.
    ``global``: also ``echo 1 > /proc/sys/vm/drop_caches`` (root only; drops every file's pages).
    ``none``: only ``sync``.
    """
    os.sync()
    if mode == "none":
        return
    for path in files_under(roots):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # removed meanwhile, a socket, a link
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if mode == "global":
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


def global_drop_permitted() -> bool:
    """Whether this process may write /proc/sys/vm/drop_caches (it is write-only; asking access() is enough)."""
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def resident_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache now (``fincore``); used to check that a drop worked."""
    result = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[0])
