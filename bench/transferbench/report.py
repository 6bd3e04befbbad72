"""From the raw records to the tables and the goals of issue 15.

Everything here works on the results JSON alone, so a later run (or a merge of several: the 16 GiB scale run
is compared with a 1 GiB run) can be re-rendered with ``python bench/transfer_bench.py --report FILE...``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .tools import (
    CFR,
    CP,
    CURL_DOWN,
    CURL_UP,
    CURL_VERIFY,
    EXPORT,
    HASHLIB,
    LIMIT,
    OPERATIONS,
    PULL,
    PULL_DIR,
    PUSH,
    SAVE,
    SAVE_PUSH,
    SHA256SUM,
    WIRE,
)
from .workloads import SCALE, GiB

MB = 1_000_000
FORMATS = ("ormb (default format)", "ormb (modelpack)")

# The references shown under each operation, and which one each ratio is taken against.
REFERENCES: dict[str, list[tuple[str, str]]] = {
    SAVE: [(LIMIT, HASHLIB), (LIMIT, SHA256SUM)],
    PUSH: [(WIRE, CURL_UP)],
    SAVE_PUSH: [(WIRE, CURL_UP), (LIMIT, HASHLIB)],
    PULL: [(LIMIT, HASHLIB), (WIRE, CURL_DOWN), (WIRE, CURL_VERIFY)],
    PULL_DIR: [(LIMIT, HASHLIB), (WIRE, CURL_DOWN), (WIRE, CURL_VERIFY)],
    EXPORT: [(LIMIT, CP), (LIMIT, CFR)],
}
THROUGHPUT_LIMIT = {SAVE: (LIMIT, HASHLIB), PUSH: (WIRE, CURL_UP), SAVE_PUSH: (WIRE, CURL_UP),
                    PULL: (LIMIT, HASHLIB), PULL_DIR: (LIMIT, HASHLIB), EXPORT: (LIMIT, CP)}
CPU_REFERENCE = {PUSH: (WIRE, CURL_UP), SAVE_PUSH: (WIRE, CURL_UP), PULL: (WIRE, CURL_VERIFY),
                 PULL_DIR: (WIRE, CURL_VERIFY)}


@dataclass(frozen=True)
class Stats:
    """Median and range over the runs of one (workload, operation, tool)."""

    runs: int
    mbps: tuple[float, float, float]  # median, min, max
    cpu_per_gib: tuple[float, float, float]
    cores: float  # median CPU seconds per wall second: > 1 means more than one core at work
    rss_mib: float  # the highest of the runs
    server_cpu_per_gib: float | None


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def aggregate(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], Stats]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["workload"], r["operation"], r["tool"]), []).append(r)
    stats = {}
    for key, rows in groups.items():
        gib = rows[0]["bytes"] / GiB
        cpu = [(r["user_s"] + r["sys_s"]) for r in rows]
        server = [r["server_cpu_s"] for r in rows if r.get("server_cpu_s") is not None]
        stats[key] = Stats(
            runs=len(rows),
            mbps=_spread([r["bytes"] / MB / r["wall_s"] for r in rows]),
            cpu_per_gib=_spread([c / gib for c in cpu]),
            cores=statistics.median(c / r["wall_s"] for c, r in zip(cpu, rows, strict=True)),
            rss_mib=max(r["rss_mib"] for r in rows),
            server_cpu_per_gib=statistics.median(server) / gib if len(server) == len(rows) else None,
        )
    return stats


def _fmt(triple: tuple[float, float, float], digits: int) -> str:
    median, low, high = triple
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b and not math.isnan(a) else ""


def _server(s: Stats) -> str:
    """The registry's own CPU per GiB meanwhile: what a push costs on the other side (shown where it works)."""
    return f"{s.server_cpu_per_gib:.2f}" if s.server_cpu_per_gib is not None and s.server_cpu_per_gib >= 0.05 else ""


def _order(tool: str) -> tuple[int, str]:
    return (0 if tool.startswith("ormb") else 1 if tool.startswith("original") else 2, tool)


def background(records: list[dict[str, Any]], workload: str) -> str:
    """How busy the rest of the machine was while this workload was measured (other users' test runs)."""
    others = [r["others_cores"] for r in records if r["workload"] == workload and r.get("others_cores") is not None]
    if not others:
        return ""
    return (f"Other processes kept {statistics.median(others):.2f} cores busy on median during these "
            f"measurements (up to {max(others):.2f}); {len(others)} measurements.")


def tables(stats: dict[tuple[str, str, str], Stats], records: list[dict[str, Any]] | None = None) -> str:
    """One table per workload: each operation's tools, then the references it is compared with."""
    out = []
    for workload in sorted({k[0] for k in stats}, key=_workload_order):
        lines = [f"#### workload {workload}", "",
                 "| operation | tool | MB/s median (min-max) | CPU s/GiB median (min-max) | cores | peak RSS MiB "
                 "| MB/s ÷ limit | CPU ÷ curl | registry CPU s/GiB |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for operation in OPERATIONS:
            tools = sorted((k[2] for k in stats if k[0] == workload and k[1] == operation), key=_order)
            if not tools:
                continue
            limit = stats.get((workload, *THROUGHPUT_LIMIT[operation]))
            cpu_ref = stats.get((workload, *CPU_REFERENCE[operation])) if operation in CPU_REFERENCE else None
            for tool in tools:
                s = stats[(workload, operation, tool)]
                lines.append(
                    f"| {operation} | {tool} | {_fmt(s.mbps, 0)} | {_fmt(s.cpu_per_gib, 2)} | {s.cores:.2f} "
                    f"| {s.rss_mib:.0f} | {_ratio(s.mbps[0], limit.mbps[0] if limit else None)} "
                    f"| {_ratio(s.cpu_per_gib[0], cpu_ref.cpu_per_gib[0] if cpu_ref else None)} "
                    f"| {_server(s)} |")
            for reference in REFERENCES[operation]:
                s_ref = stats.get((workload, *reference))
                if s_ref is not None:
                    lines.append(f"| {operation} | *limit: {reference[1]}* | {_fmt(s_ref.mbps, 0)} "
                                 f"| {_fmt(s_ref.cpu_per_gib, 2)} | {s_ref.cores:.2f} | {s_ref.rss_mib:.0f} | | "
                                 f"| {_server(s_ref)} |")
        note = background(records or [], workload)
        out.append("\n".join(lines) + (f"\n\n{note}" if note else ""))
    return "\n\n".join(out)


def _workload_order(name: str) -> tuple[int, str]:
    order = ["tiny", "1g", "4x1g", "16g"]
    return (order.index(name) if name in order else len(order), name)


@dataclass(frozen=True)
class Goal:
    goal: str
    workload: str
    tool: str
    figure: str
    met: bool | None  # None: not measured in these results

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else "**met**" if self.met else "**not met**"


def goals(results: dict[str, Any]) -> list[Goal]:
    """Issue 15's goals, each marked met or not with the figures it was judged on."""
    stats = aggregate(results["records"])
    found: list[Goal] = []

    def get(workload: str, operation: str, tool: str) -> Stats | None:
        return stats.get((workload, operation, tool))

    workloads = sorted({k[0] for k in stats if k[0] != SCALE}, key=_workload_order)
    for workload in workloads:
        for tool in FORMATS:
            push, curl_up = get(workload, PUSH, tool), get(workload, *CURL_UP_KEY)
            if push and curl_up:
                t, c = push.mbps[0] / curl_up.mbps[0], push.cpu_per_gib[0] / curl_up.cpu_per_gib[0]
                found.append(Goal("push: ≥ 1.0x curl's MB/s and ≤ 1.2x its CPU/GiB", workload, tool,
                                  f"{t:.2f}x MB/s ({push.mbps[0]:.0f} vs {curl_up.mbps[0]:.0f}), {c:.2f}x CPU "
                                  f"({push.cpu_per_gib[0]:.2f} vs {curl_up.cpu_per_gib[0]:.2f} s/GiB)",
                                  t >= 1.0 and c <= 1.2))
            for operation, label in ((PULL, "pull"), (PULL_DIR, "storage initializer (pull to directory)")):
                s, limit, verify = get(workload, operation, tool), get(workload, *HASHLIB_KEY), get(workload, *VERIFY_KEY)
                if s and limit and verify:
                    t, c = s.mbps[0] / limit.mbps[0], s.cpu_per_gib[0] / verify.cpu_per_gib[0]
                    # sha256sum may lack SHA-NI (Debian's coreutils does): curl + hashlib is the stricter floor
                    down = get(workload, WIRE, CURL_DOWN)
                    strict = (f"; {s.cpu_per_gib[0] / (down.cpu_per_gib[0] + limit.cpu_per_gib[0]):.2f}x curl + "
                              f"hashlib ({down.cpu_per_gib[0] + limit.cpu_per_gib[0]:.2f} s/GiB)") if down else ""
                    found.append(Goal(f"{label}: ≥ 0.9x read + SHA-256 MB/s, ≤ 1.2x CPU/GiB of curl + sha256sum",
                                      workload, tool,
                                      f"{t:.2f}x MB/s ({s.mbps[0]:.0f} vs {limit.mbps[0]:.0f}), {c:.2f}x CPU "
                                      f"({s.cpu_per_gib[0]:.2f} vs {verify.cpu_per_gib[0]:.2f} s/GiB){strict}; "
                                      f"{s.cores:.2f} cores", t >= 0.9 and c <= 1.2))
            save, limit = get(workload, SAVE, tool), get(workload, *HASHLIB_KEY)
            if save and limit:
                target = 0.6 if tool == FORMATS[0] else 0.8
                t = save.mbps[0] / limit.mbps[0]
                found.append(Goal(f"save: ≥ {target}x read + SHA-256 MB/s", workload, tool,
                                  f"{t:.2f}x ({save.mbps[0]:.0f} vs {limit.mbps[0]:.0f} MB/s)", t >= target))
            export, cp = get(workload, EXPORT, tool), get(workload, *CP_KEY)
            if export and cp:
                t = export.mbps[0] / cp.mbps[0]
                found.append(Goal("export: ≥ 0.8x cp MB/s", workload, tool,
                                  f"{t:.2f}x ({export.mbps[0]:.0f} vs {cp.mbps[0]:.0f} MB/s)", t >= 0.8))
    found += _scale_goals(stats)
    found += _startup_goals(results.get("startup") or {})
    return found


HASHLIB_KEY, CP_KEY, CURL_UP_KEY, VERIFY_KEY = (LIMIT, HASHLIB), (LIMIT, CP), (WIRE, CURL_UP), (WIRE, CURL_VERIFY)


def _scale_goals(stats: dict[tuple[str, str, str], Stats]) -> list[Goal]:
    found = []
    for tool in FORMATS:
        for operation in (SAVE, PUSH, PULL, PULL_DIR, EXPORT):
            big, small = stats.get((SCALE, operation, tool)), stats.get(("1g", operation, tool))
            if big is None:
                continue
            found.append(Goal(f"scale, {operation}: peak RSS < 100 MiB at 16 GiB", SCALE, tool,
                              f"{big.rss_mib:.0f} MiB", big.rss_mib < 100))
            if small is not None:
                c = big.cpu_per_gib[0] / small.cpu_per_gib[0]
                found.append(Goal(f"scale, {operation}: CPU/GiB within 10% of the 1 GiB workload", SCALE, tool,
                                  f"{c:.2f}x ({big.cpu_per_gib[0]:.2f} vs {small.cpu_per_gib[0]:.2f} s/GiB)",
                                  c <= 1.1))
    return found


def _startup_goals(startup: dict[str, Any]) -> list[Goal]:
    timings = startup.get("timings") or {}
    if not timings:
        return []
    floor = timings.get("python -c 'import click'")
    found = []
    def cpu(t: dict[str, list[float]]) -> float:
        return statistics.median(u + s for u, s in zip(t["user_s"], t["sys_s"], strict=True))

    for label in ("ormb --version", "ormb --help"):
        if label in timings and floor:
            wall, floor_wall = statistics.median(timings[label]["wall_s"]), statistics.median(floor["wall_s"])
            found.append(Goal(f"start-up: `{label}` ≤ 1.5x `python -c 'import click'`", "-", "ormb",
                              f"{wall / floor_wall:.2f}x wall ({wall:.3f} vs {floor_wall:.3f} s); "
                              f"{cpu(timings[label]) / cpu(floor):.2f}x CPU ({cpu(timings[label]):.3f} vs "
                              f"{cpu(floor):.3f} s)", wall / floor_wall <= 1.5))
    models = next((k for k in timings if k.startswith("ormb models")), None)
    if models and startup.get("models", 0) >= 1000:  # the goal is about a cache of 1,000 models
        wall = statistics.median(timings[models]["wall_s"])
        found.append(Goal(f"start-up: `{models}` < 1 s", "-", "ormb", f"{wall:.3f} s", wall < 1.0))
    return found


def goals_table(found: list[Goal]) -> str:
    lines = ["| goal | workload | tool | figures (medians) | result |", "|---|---|---|---|---|"]
    lines += [f"| {g.goal} | {g.workload} | {g.tool} | {g.figure} | {g.verdict} |" for g in found]
    return "\n".join(lines)


def startup_table(startup: dict[str, Any]) -> str:
    timings = startup.get("timings") or {}
    lines = ["| command | wall s median (min-max) | CPU s median | runs |", "|---|---|---|---|"]
    for label, t in timings.items():
        cpu = [u + s for u, s in zip(t["user_s"], t["sys_s"], strict=True)]
        lines.append(f"| `{label}` | {_fmt(_spread(t['wall_s']), 3)} | {statistics.median(cpu):.3f} "
                     f"| {len(t['wall_s'])} |")
    return "\n".join(lines)


def importtime_table(startup: dict[str, Any], top: int = 15) -> str:
    rows = (startup.get("importtime") or [])[:top]
    lines = ["| module | cumulative ms | self ms |", "|---|---|---|"]
    lines += [f"| `{'  ' * r['depth']}{r['module']}` | {r['cumulative_ms']:.1f} | {r['self_ms']:.1f} |" for r in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    parts = [tables(aggregate(results["records"]), results["records"])]
    if results.get("skipped"):
        parts.append("Not measured:\n" + "\n".join(f"- {tool}: {why}" for tool, why in sorted(results["skipped"].items())))
    if results.get("errors"):
        parts.append("Failed:\n" + "\n".join(f"- {e}" for e in results["errors"]))
    if results.get("startup", {}).get("timings"):
        parts.append("#### start-up\n\n" + startup_table(results["startup"]))
    if results.get("startup", {}).get("importtime"):
        parts.append("#### heaviest imports of `import ormb.cli.main` (python -X importtime, median of runs)\n\n"
                     + importtime_table(results["startup"]))
    parts.append("#### goals (issue 15)\n\n" + goals_table(goals(results)))
    return "\n\n".join(parts)
