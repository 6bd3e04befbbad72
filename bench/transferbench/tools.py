"""Each tool's run: the operations it can do, each one measured as the command a user types.

A tool's run starts from an empty registry and an empty run directory, and every command starts with the
pages of every file the benchmark touches dropped (see :func:`measure.drop_pages`), so each operation reads
what it reads from disk and no earlier write-back is still going on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .measure import Measurement, drop_pages, run_measured
from .registry import Distribution
from .workloads import GiB, Workload

BIN = Path(sys.executable).parent
LIMITS_SCRIPT = Path(__file__).with_name("limits.py")
ORIGINAL_ENV = "ORMB_ORIGINAL_BIN"

# Operations.  "save + push" is directory -> registry (what oras-py and modelpack-client do in one command);
# "pull to directory" is registry -> directory without a cache (the storage initializer of KServe/Seldon).
SAVE, PUSH, SAVE_PUSH, PULL, PULL_DIR, EXPORT = "save", "push", "save + push", "pull", "pull to directory", "export"
OPERATIONS = (SAVE, PUSH, SAVE_PUSH, PULL, PULL_DIR, EXPORT)
LIMIT, WIRE = "limit", "wire"  # the references' pseudo-operations
HASHLIB, SHA256SUM, CP, CFR = "hashlib read + SHA-256", "sha256sum", "cp", "copy_file_range"
CURL_UP, CURL_DOWN, CURL_VERIFY = "curl upload", "curl download", "curl download + sha256sum -c"


@dataclass
class Context:
    """What a tool's run needs: the workload, a registry, a scratch directory, and where results go."""

    workload: Workload
    registry: Distribution
    run_dir: Path
    drop_mode: str
    record: Callable[[str, str, Measurement], None]
    keep_roots: list[Path] = field(default_factory=list)  # other files the run reads (a tool's prepared input)

    def measure(self, operation: str, tool: str, cmd: list[str], *, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Measurement:
        drop_pages([self.workload.directory, self.run_dir, *self.keep_roots], self.drop_mode)
        result = run_measured(cmd, env=env, cwd=cwd, server_pid=self.registry.pid)
        self.record(operation, tool, result)
        return result

    def path(self, name: str) -> Path:
        return self.run_dir / name


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORMB_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


class Tool:
    key = ""  # what --tools selects
    name = ""  # the label in the tables

    def unavailable(self, workload: Workload) -> str | None:
        """Why this tool cannot run here (printed and written to the results), or None."""
        return None

    def prepare(self, workload: Workload, scratch: Path) -> list[Path]:
        """Unmeasured set-up once per workload; returns the paths the runs read (their pages are dropped too)."""
        return []

    def run(self, ctx: Context) -> None:
        raise NotImplementedError


class Ormb(Tool):
    """This project's CLI, one artifact format: save, push, pull-and-export, pull, export."""

    def __init__(self, artifact_format: str) -> None:
        self.format = artifact_format
        self.key = "ormb"
        self.name = f"ormb ({'default format' if artifact_format == 'ormb' else artifact_format})"

    def run(self, ctx: Context) -> None:
        ormb = str(BIN / "ormb")
        ref = f"{ctx.registry.host}/bench/ormb-{self.format}:v1"
        saver = clean_env(ORMB_HOME=str(ctx.path("home-save")), ORMB_NO_PROGRESS="1")
        save = ctx.measure(SAVE, self.name, [ormb, "save", str(ctx.workload.directory), ref, "--format", self.format],
                           env=saver)
        push = ctx.measure(PUSH, self.name, [ormb, "push", ref], env=saver)
        ctx.record(SAVE_PUSH, self.name, save + push)
        shutil.rmtree(ctx.path("home-save"))  # the order keeps at most model + registry + one copy on disk
        puller = clean_env(ORMB_HOME=str(ctx.path("home-pull")), ORMB_NO_PROGRESS="1")
        ctx.measure(PULL_DIR, self.name, [ormb, "pull-and-export", ref, str(ctx.path("serving"))], env=puller)
        shutil.rmtree(ctx.path("serving"))
        ctx.measure(PULL, self.name, [ormb, "pull", ref], env=puller)
        ctx.registry.stop()
        shutil.rmtree(ctx.registry.storage, ignore_errors=True)  # the export's copy takes the registry's place
        ctx.measure(EXPORT, self.name, [ormb, "export", ref, "-d", str(ctx.path("export"))], env=puller)


class Original(Tool):
    """The original ormb (Go), built from its vendored source; its path comes from $ORMB_ORIGINAL_BIN."""

    key, name = "original", "original ormb (Go)"

    def __init__(self) -> None:
        self.binary = os.environ.get(ORIGINAL_ENV, "")

    def unavailable(self, workload: Workload) -> str | None:
        if not self.binary:
            return f"${ORIGINAL_ENV} is not set (bench/README.md says how to build the original ormb)"
        if not os.access(self.binary, os.X_OK):
            return f"${ORIGINAL_ENV}={self.binary} is not an executable"
        if workload.size > 5 * GiB:
            return "it gzips the whole model into memory before writing it (pkg/saver: a bytes.Buffer)"
        return None

    def run(self, ctx: Context) -> None:
        ref = f"{ctx.registry.host}/bench/original:v1"
        home = ctx.path("home-original")  # HOME too: it must not read the user's ~/.ormb or docker config
        home.mkdir(parents=True)
        saver = clean_env(HOME=str(home), ORMB_ROOTPATH=str(ctx.path("root-save")))
        save = ctx.measure(SAVE, self.name, [self.binary, "save", str(ctx.workload.directory), ref], env=saver)
        # Plain HTTP: 'push'/'pull' take --plain-http (its 'login --insecure' only skips TLS verification).
        push = ctx.measure(PUSH, self.name, [self.binary, "push", "--plain-http", ref], env=saver)
        ctx.record(SAVE_PUSH, self.name, save + push)
        shutil.rmtree(ctx.path("root-save"))
        puller = clean_env(HOME=str(home), ORMB_ROOTPATH=str(ctx.path("root-pull")))
        pull = ctx.measure(PULL, self.name, [self.binary, "pull", "--plain-http", ref], env=puller)
        ctx.registry.stop()
        export = ctx.measure(EXPORT, self.name, [self.binary, "export", ref, "-d", str(ctx.path("export"))],
                             env=puller)
        # Its storage initializer (cmd/ormb-storage-initializer) runs exactly Pull then Export through its cache.
        ctx.record(PULL_DIR, self.name + ": pull + export", pull + export)


class Curl(Tool):
    """The wire: curl uploads (POST, then PUT -T per file) and downloads (-o) of the model's files, one stream."""

    key, name = "curl", "curl"

    def unavailable(self, workload: Workload) -> str | None:
        return None if shutil.which("curl") else "curl is not installed"

    def run(self, ctx: Context) -> None:
        repo = "bench/curl"
        digests = ctx.workload.digests()
        uploads = [
            f"curl -sS -f -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' "
            f"-T {shlex.quote(str(path))} {shlex.quote(ctx.registry.upload_url(repo, digest))}"
            for path, digest in digests.items()
        ]
        ctx.measure(WIRE, CURL_UP, ["sh", "-c", " && ".join(uploads)])
        out = ctx.path("curl")
        out.mkdir()
        downloads = " && ".join(
            f"curl -sS -f -o {shlex.quote(str(out / path.name))} {shlex.quote(ctx.registry.blob_url(repo, digest))}"
            for path, digest in digests.items())
        ctx.measure(WIRE, CURL_DOWN, ["sh", "-c", downloads])
        sums = ctx.path("curl.sha256")
        sums.write_text("".join(f"{d.removeprefix('sha256:')}  {out / p.name}\n" for p, d in digests.items()))
        ctx.measure(WIRE, CURL_VERIFY, ["sh", "-c", f"{downloads} && sha256sum --quiet -c {shlex.quote(str(sums))}"])


class Limits(Tool):
    """What the machine can do on the same bytes: read + SHA-256 (hashlib, sha256sum), read + write (cp, copy_file_range)."""

    key, name = "limits", "limits"

    def run(self, ctx: Context) -> None:
        files = [str(p) for p in ctx.workload.files]
        ctx.measure(LIMIT, HASHLIB, [sys.executable, str(LIMITS_SCRIPT), "sha256", *files])
        ctx.measure(LIMIT, SHA256SUM, ["sha256sum", *files])
        ctx.path("cp").mkdir()
        ctx.measure(LIMIT, CP, ["cp", *files, str(ctx.path("cp"))])
        shutil.rmtree(ctx.path("cp"))
        ctx.measure(LIMIT, CFR, [sys.executable, str(LIMITS_SCRIPT), "copy_file_range", str(ctx.path("cfr")), *files])


class Skopeo(Tool):
    """skopeo copy between an OCI layout (ormb's cache, default format, saved beforehand) and the registry."""

    key, name = "skopeo", "skopeo copy"
    SOURCE = "localhost:5000/bench/skopeo-source:v1"

    def unavailable(self, workload: Workload) -> str | None:
        return None if shutil.which("skopeo") else "skopeo is not installed"

    def prepare(self, workload: Workload, scratch: Path) -> list[Path]:
        self.home = scratch / f"skopeo-source-{workload.name}"
        if not (self.home / "done").exists():
            shutil.rmtree(self.home, ignore_errors=True)
            run_measured([str(BIN / "ormb"), "save", str(workload.directory), self.SOURCE],
                         env=clean_env(ORMB_HOME=str(self.home), ORMB_NO_PROGRESS="1"))
            (self.home / "done").touch()
        return [self.home]

    def run(self, ctx: Context) -> None:
        skopeo = shutil.which("skopeo") or "skopeo"
        for cache_dir in (Path("/var/lib/containers/cache"), Path.home() / ".local/share/containers/cache"):
            for cache in cache_dir.glob("blob-info-cache-v1.*"):  # skopeo would mount blobs it saw before
                cache.unlink(missing_ok=True)
        target = f"docker://{ctx.registry.host}/bench/skopeo:v1"
        ctx.measure(PUSH, self.name, [skopeo, "copy", "-q", "--dest-tls-verify=false",
                                      f"oci:{self.home / 'cache'}:{self.SOURCE}", target])
        ctx.measure(PULL, self.name + " (to an OCI layout)",
                    [skopeo, "copy", "-q", "--src-tls-verify=false", target, f"oci:{ctx.path('layout')}:v1"])


class OrasPy(Tool):
    """oras-py 0.2: push the model's files (hashing them first) and pull them (it verifies no digest)."""

    key, name = "oras", "oras-py"

    def unavailable(self, workload: Workload) -> str | None:
        return None if importlib.util.find_spec("oras") else "oras-py is not installed (pip install oras)"

    def run(self, ctx: Context) -> None:
        target = f"{ctx.registry.host}/bench/oras:v1"
        files = [p.name for p in ctx.workload.files]
        push = ("import oras.client; oras.client.OrasClient(insecure=True).push("
                f"target={target!r}, files={files!r}, quiet=True)")
        ctx.measure(SAVE_PUSH, self.name, [sys.executable, "-c", push], cwd=ctx.workload.model)
        pull = f"import oras.client; oras.client.OrasClient(insecure=True).pull(target={target!r}, outdir={str(ctx.path('out'))!r})"
        ctx.measure(PULL_DIR, self.name + " (no verification)", [sys.executable, "-c", pull])


class ModelpackClient(Tool):
    """modelpack-client (PyPI): pushes a directory's files as a ModelPack artifact (hashing them first) and
    pulls one into a directory, verifying digests.  It has no local cache, so no save/push/pull/export apart."""

    key, name = "modelpack-client", "modelpack-client"
    CONFIG_FILES = {".json": "application/vnd.cncf.model.weight.config.v1.raw",
                    ".md": "application/vnd.cncf.model.doc.v1.raw"}

    def unavailable(self, workload: Workload) -> str | None:
        if importlib.util.find_spec("modelpack_client") is None:
            return "modelpack-client is not installed (pip install modelpack-client)"
        return None

    def run(self, ctx: Context) -> None:
        client = [sys.executable, "-m", "modelpack_client", "--insecure"]
        ref = f"{ctx.registry.host}/bench/modelpack-client:v1"
        config = ctx.path("modelpack-config.json")
        config.write_text(json.dumps({"descriptor": {"name": "bench", "version": "v1"}, "config": {},
                                      "modelfs": {"type": "layers", "diffIds": []}}))
        layers: list[str] = []
        for path in ctx.workload.files:
            media_type = self.CONFIG_FILES.get(path.suffix)
            layers += ["--layer", f"{path.name}:{media_type}" if media_type else path.name]
        ctx.measure(SAVE_PUSH, self.name, [*client, "push", ref, "--config", str(config), *layers],
                    cwd=ctx.workload.model)
        ctx.measure(PULL_DIR, self.name, [*client, "pull", ref, str(ctx.path("out"))])


def all_tools() -> list[Tool]:
    """In the order of the first run (later runs rotate it): ormb's two formats apart, peers in between."""
    return [Ormb("ormb"), Curl(), Original(), Limits(), Ormb("modelpack"), Skopeo(), OrasPy(), ModelpackClient()]


TOOL_KEYS = ("ormb", "original", "curl", "limits", "skopeo", "oras", "modelpack-client")
