"""``ormb``: commands, each a thin wrapper over a function of :mod:`ormb.api`."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ormb._version import __version__
from ormb.cli.render import (
    RichProgress,
    human_size,
    human_time,
    plural,
    print_json,
    print_table,
    say,
    say_lines,
    to_jsonable,
)
from ormb.errors import IntegrityError, OrmbError, UsageError
from ormb.model.gzipstream import COMPRESSIONS
from ormb.signing.names import ALGORITHMS, PASSWORD_ENV  # no cryptography: see that module


class _Deferred:
    """A module imported when first used: ``ormb --help`` and ``--version`` start without the API and what it
    pulls in (pydantic, urllib3, the packers), which only the commands that run need."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


# Everything else a command needs is imported inside it (pathlib, the settings, the transport options ...):
# `ormb --help` and `--version` import click and this module only (tests/e2e/test_startup_imports.py).
if TYPE_CHECKING:
    from pathlib import Path

    from ormb import api
    from ormb.oci.reference import Reference
    from ormb.progress import ProgressListener
    from ormb.registry.options import TransportOptions
else:
    api = _Deferred("ormb.api")

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 5242880, 5M or 1G") from None


def _optional_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else _size(value)


max_expand_option = click.option(
    "--max-expand", callback=_optional_size, envvar="ORMB_MAX_EXPAND", metavar="SIZE",
    help="The most the whole export may unpack to, all layers together, e.g. 500G (default: 20 times the "
         "compressed bytes read, at least 1G; every entry and directory counts 4K; env ORMB_MAX_EXPAND).")


def verify_options(command: Any) -> Any:
    """--verify-key and --trust-dir: refuse a model not signed by one of these keys."""
    command = click.option(
        "--trust-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
        help="Refuse a model not signed by one of the public keys (*.pub, *.pem) in DIR (env ORMB_TRUST_DIR).")(command)
    return click.option(
        "--verify-key", "verify_key", multiple=True, type=click.Path(dir_okay=False), metavar="KEY.pub",
        help="Refuse (exit 4, nothing written) a model that is unsigned, signed by another key, or whose files "
             "differ from the signed ones; repeatable (env ORMB_VERIFY_KEY, ':'-separated).")(command)


def remote_options(command: Any) -> Any:
    """The options every command that talks to a registry takes."""
    options = [
        click.option("--plain-http/--tls", "plain_http", default=None,
                     help="Force HTTP or HTTPS (default: HTTP for localhost, 127.0.0.1 and ::1, else HTTPS)."),
        click.option("--insecure", is_flag=True, help="Use HTTPS without verifying the certificate."),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                     help="Trust this CA certificate (PEM) for the registry."),
        click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
                     help="Blobs transferred at once."),
        click.option("--retries", type=click.IntRange(0, 20), default=4, show_default=True,
                     help="Retries on connection errors and 5xx/429 answers, with backoff."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _transport(kwargs: dict[str, Any], chunk_size: int | None = None) -> TransportOptions:
    from ormb.registry.options import TransportOptions

    return TransportOptions(
        plain_http=kwargs.pop("plain_http"), insecure=kwargs.pop("insecure"), ca_file=kwargs.pop("ca_file"),
        concurrency=kwargs.pop("concurrency"), retries=kwargs.pop("retries"), chunk_size=chunk_size,
    )


@contextlib.contextmanager
def _progress(ctx: click.Context) -> Iterator[ProgressListener | None]:
    if ctx.find_root().params.get("no_progress") or not sys.stderr.isatty():
        yield None
        return
    with RichProgress() as bar:
        yield bar


class _Group(click.Group):
    """Resolves the documented aliases (``list`` for ``models``, ``rm`` for ``remove``)."""

    aliases = {"list": "models", "ls": "models", "rm": "remove"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("--no-progress", is_flag=True, envvar="ORMB_NO_PROGRESS", help="Never draw progress bars.")
@click.version_option(__version__, "--version", prog_name="ormb")
def cli(debug: bool, no_progress: bool) -> None:
    """ormb manages machine-learning models the way Docker manages images.

    \b
    A model directory holds ormbfile.yaml (metadata) and model/ (the files):
      ormb init ./fashion                                   write a starting ormbfile.yaml
      ormb save ./fashion localhost:5000/team/fashion:v1    pack it into the local cache
      ormb push localhost:5000/team/fashion:v1              upload it to its registry
      ormb pull localhost:5000/team/fashion:v1              download it on another machine
      ormb export localhost:5000/team/fashion:v1 -d out     unpack it again
      ormb models                                           list the cache
      ormb sign REF --key team.pem / ormb verify REF --key team.pub   signed models

    A reference without a registry host uses $ORMB_REGISTRY, else 'registry' in
    $ORMB_HOME/config.yaml, else localhost:5000.  The cache lives in $ORMB_HOME
    (default ~/.ormb).

    \b
    Exit codes: 0 ok; 1 error (disk, permissions); 2 bad input or usage (reference,
    ormbfile.yaml, model files, a key file, an option that does not apply); 3 not found;
    4 corrupt or unsafe content, or a signature check that fails; 5 authentication failed
    or access denied; 6 the registry cannot be reached or answered with an error; 70
    internal error; 130 interrupted.
    """


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.argument("reference")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="stored", show_default=True,
              help="stored: gzip without compression, byte-for-byte reproducible on any machine and fastest; "
                   "fast/best: smaller layers, reproducible only on the same machine type.")
@click.option("--format", "artifact_format", type=click.Choice(["ormb", "modelpack"]), default=None,
              help="ormb: the original ormb format, one tar+gzip layer (default; Harbor shows it as a MODEL); "
                   "modelpack: CNCF ModelPack, one layer per file (dedup per file, partial pulls). "
                   "'artifactFormat' in ormbfile.yaml chooses too.")
@click.option("--modelpack-names", type=click.Choice(["cncf", "cnai"]), default=None,
              help="ModelPack only. cncf: the current names, vnd.cncf.model.* (default); cnai: the older "
                   "vnd.cnai.model.* names, which the model view of Harbor 2.13-2.15 needs. "
                   "'modelpackNames' in ormbfile.yaml chooses too.")
@click.option("--include-hidden/--exclude-hidden", default=None,
              help="Also pack hidden files and directories (.git/, .cache/, .DS_Store); they are left out by "
                   "default. 'includeHidden' in ormbfile.yaml chooses too.")
@json_option
@click.pass_context
def save(ctx: click.Context, directory: str, reference: str, compression: str, artifact_format: str | None,
         modelpack_names: str | None, include_hidden: bool | None, as_json: bool) -> None:
    """Pack DIRECTORY (ormbfile.yaml + model/) into the local cache as REFERENCE.

    Without an ormbfile.yaml the format is guessed from the file names; the directory is
    never written to.
    """
    with _progress(ctx) as bar:
        result = api.save(directory, reference, compression=compression, artifact_format=artifact_format,
                          modelpack_names=modelpack_names, include_hidden=include_hidden, progress=bar)
    if as_json:
        print_json(result)
        return
    for skipped in result.skipped:
        say(f"warning: skipped {skipped}", err=True)
    if result.hidden:
        shown = ", ".join(result.hidden[:5]) + (f" and {len(result.hidden) - 5} more" if len(result.hidden) > 5 else "")
        say(f"note: left out {plural(len(result.hidden), 'hidden file or directory', 'hidden files and directories')}"
                   f" ({shown}); --include-hidden packs them", err=True)
    for note in result.notes:
        say(f"note: {note}", err=True)
    if result.signature_filled:
        say("note: signature read from the model file", err=True)
    if result.format_guessed:
        say(f"note: no format given in an ormbfile.yaml; guessed {result.format} from the file names "
                   f"in {directory}", err=True)
    say(f"ref:       {result.reference}")
    say(f"digest:    {result.digest}")
    say(f"size:      {human_size(result.size)}")
    say(f"format:    {result.format}")
    say(f"{result.reference.tag}: saved")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--force", is_flag=True, help="Replace an existing ormbfile.yaml.")
def init(directory: str, force: bool) -> None:
    """Write a starting DIRECTORY/ormbfile.yaml from the files in DIRECTORY/model.

    The format is guessed from the file names, the framework from the format, and the
    signature read from the model where ormb can (ONNX; SavedModel with TensorFlow
    installed). Edit the file, then 'ormb save'.
    """
    meta = api.init(directory, force=force)
    say(f"wrote {directory}/ormbfile.yaml (format {meta.format}"
               f"{', signature from the model' if meta.signature else ''}); edit it, then 'ormb save'")


@cli.command()
@click.argument("reference")
@click.option("-d", "--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to export into; created if needed.")
@click.option("--no-metadata", is_flag=True, help="Do not write ormbfile.yaml.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only the files whose path (or name) matches, e.g. '*.Q4_K_M.gguf' (ModelPack); repeatable.")
@max_expand_option
@verify_options
@click.option("--signature", "signature_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the model's signature to FILE, for 'model_signing verify key --signature FILE'.")
@json_option
@click.pass_context
def export(ctx: click.Context, reference: str, directory: str, no_metadata: bool, include: tuple[str, ...],
           max_expand: int | None, verify_key: tuple[str, ...], trust_dir: str | None, signature_file: str | None,
           as_json: bool) -> None:
    """Unpack REFERENCE from the local cache into a directory (model/ and ormbfile.yaml).

    Existing files are replaced whole; nothing is written if the layer is corrupt or unsafe, and
    nothing outside the directory is ever touched. A cached blob whose verified stamp shows it unchanged
    since its bytes last matched its digest is copied without hashing it again ('ormb check' hashes
    everything); with --verify-key or --trust-dir every byte is hashed again.
    """
    with _progress(ctx) as bar:
        result = api.export(reference, directory, metadata=not no_metadata, include=include, max_expand=max_expand,
                            verify_key=verify_key or None, trust_dir=trust_dir, signature_file=signature_file,
                            progress=bar)
    if as_json:
        print_json(result)
        return
    say(f"ref:       {result.reference}")
    say(f"digest:    {result.digest}")
    if result.verified_by:
        say(f"signed by: {result.verified_by}")
    say(f"{result.reference.tag or result.digest}: exported to {result.directory} "
               f"({plural(len(result.files), 'file')})")
    for note in result.notes:
        say(f"note: {note}", err=True)


@cli.command()
@json_option
def models(as_json: bool) -> None:
    """List the models in the local cache (alias: list); CREATED is when each entered the cache.

    A model pulled with --include shows how much of it is here: SIZE '12.0 MiB of 4.0 GiB (partial)'.

    A reference that is not one usable model (an index, a missing blob, a container image)
    is listed too, with a PROBLEM column saying what is wrong.
    """
    found = api.models()
    if as_json:
        print_json(found)
        return
    problems = any(m.problem for m in found)  # the column appears only when something is wrong

    def size(m: api.ModelSummary) -> str:
        if m.problem:
            return "-"
        if m.cached_size is not None:  # a partial pull (--include): say how much of the model is here
            return f"{human_size(m.cached_size)} of {human_size(m.size)} (partial)"
        return human_size(m.size)

    rows = [[m.reference.name if m.reference.registry else m.reference.repository, m.reference.tag or "<none>",
             m.digest.partition(":")[2][:12] or "-", m.format, human_time(m.created), size(m),
             *([m.problem] if problems else [])] for m in found]
    print_table(["REPOSITORY", "TAG", "DIGEST", "FORMAT", "CREATED", "SIZE", *(["PROBLEM"] if problems else [])], rows)


@cli.command()
@click.argument("reference")
@click.option("--remote", is_flag=True, help="Read the model from its registry without pulling the layers.")
@remote_options
@json_option
def inspect(reference: str, remote: bool, as_json: bool, **kwargs: Any) -> None:
    """Show a model's metadata, files and digests (from the cache, or --remote)."""
    options = _transport(kwargs)
    details = api.inspect_remote(reference, options=options) if remote else api.inspect(reference)
    if as_json:
        print_json(details)
        return
    say(f"ref:       {details.reference}")
    say(f"digest:    {details.digest}")
    say(f"size:      {human_size(details.size)}")
    say(f"format:    {details.metadata.format or '-'}")
    say(f"created:   {details.created.isoformat() if details.created else '-'}")
    if details.cached:
        say(f"cached:    {details.cached.isoformat()}")
    say(f"config:    {details.config['digest']} ({details.config['mediaType']})")
    for layer in details.layers:
        say(f"layer:     {layer['digest']} ({layer['mediaType']}, {human_size(int(str(layer['size'])))})")
    metadata: dict[str, Any] = to_jsonable(details.metadata)
    metadata.pop("directoryStructure", None)
    metadata.pop("format", None)
    if metadata:
        say("metadata:")
        say_lines(_indented_yaml(metadata))
    if details.model_info:
        say("model config (as its tool wrote it):")
        say_lines(_indented_yaml(details.model_info))
    say(f"files:     {len(details.files)}")
    for name in details.files:
        say(f"  {name}")


def _indented_yaml(value: Any) -> str:
    import yaml

    return "  " + yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip().replace("\n", "\n  ")


class _InputError(click.ClickException):
    """Bad command-line input, shown as one ``Error:`` line (no usage text); exit code 2."""

    exit_code = 2


@cli.command()
@click.argument("host")
@click.option("-u", "--username", help="The user name; asked for when not given.")
@click.option("-p", "--password", help="The password (insecure: it stays in your shell history; "
              "prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@remote_options
def login(host: str, username: str | None, password: str | None, password_stdin: bool, **kwargs: Any) -> None:
    """Log in to the registry HOST; credentials go to $ORMB_HOME/config.json (mode 0600).

    HOST may be a URL, as for docker login: https://registry.example.com:5000/ means
    registry.example.com:5000.
    """
    options = _transport(kwargs)
    if password and password_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if password:
        say("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if password_stdin:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    if (not username or not password) and not sys.stdin.isatty():
        missing = "user name and password" if not username else "password"
        raise _InputError(f"no terminal to ask for the {missing} (give -u USER and pipe the password in: "
                          f"echo \"$PASSWORD\" | ormb login {host} -u USER --password-stdin)")
    if not username:
        username = click.prompt("Username")
    if not password:
        password = click.prompt("Password", hide_input=True)
    api.login(host, username or "", password or "", options=options)
    say("Login Succeeded")


@cli.command()
@click.argument("host")
def logout(host: str) -> None:
    """Forget the credentials stored for the registry HOST (a host or a URL, as for login)."""
    api.logout(host)
    say(f"Removing login credentials for {api.registry_host(host)[0]}")


def _render_transfer(result: api.TransferResult, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    for digest in result.existing:
        say(f"{digest.partition(':')[2][:12]}: Already exists")
    for digest in result.mounted:
        say(f"{digest.partition(':')[2][:12]}: Mounted from another repository")
    if result.left_out:
        say(f"({plural(len(result.left_out), 'layer')} left out by --include)")
    for digest in result.transferred:
        say(f"{digest.partition(':')[2][:12]}: {verb}")


@cli.command()
@click.argument("reference")
@click.option("--chunk-size", type=str, default=None,
              help="Upload every blob in PATCH chunks of this size (e.g. 5M) for registries with request-size "
                   "limits; default: one request per blob.")
@click.option("--chunked-above", type=str, default="4G", show_default=True,
              help="Upload blobs larger than this in 64 MiB chunks ('never' to always send one request).")
@remote_options
@json_option
@click.pass_context
def push(ctx: click.Context, /, reference: str, chunk_size: str | None, chunked_above: str, as_json: bool,
         **kwargs: Any) -> None:
    """Upload REFERENCE from the local cache to its registry.

    Blobs the registry has are skipped; blobs another repository of the same registry has
    (as far as the local cache knows) are mounted instead of sent.
    """
    import dataclasses

    options = _transport(kwargs, _size(chunk_size) if chunk_size else None)
    options = dataclasses.replace(options, chunked_above=None if chunked_above == "never" else _size(chunked_above))
    ref = _parse(reference)
    if not as_json:
        say(f"The push refers to repository [{ref.name}]")
    from ormb import pushing  # not ormb.api: a push needs neither the model layer nor signing (ormb.pushing)

    with _progress(ctx) as bar:
        result = pushing.push(ref, options=options, progress=bar)
    _render_transfer(result, "Pushed", as_json)
    if not as_json:
        if result.signatures:
            say(f"({plural(len(result.signatures), 'signature')} pushed with it)")
        say(f"{result.reference.tag}: pushed to remote "
                   f"({plural(result.layers, 'layer')}, {human_size(result.size)} total)")
        say(f"digest: {result.digest}")


@cli.command()
@click.argument("reference")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only the files whose path (or name) matches, e.g. '*.Q4_K_M.gguf' (ModelPack); repeatable.")
@verify_options
@remote_options
@json_option
@click.pass_context
def pull(ctx: click.Context, /, reference: str, include: tuple[str, ...], verify_key: tuple[str, ...],
         trust_dir: str | None, as_json: bool, **kwargs: Any) -> None:
    """Download REFERENCE from its registry into the local cache, verifying every byte.

    The model's signatures come along. With --verify-key or --trust-dir the model must be signed by
    one of those keys over exactly its files; a ModelPack model is checked before any layer is
    downloaded.
    """
    options = _transport(kwargs)
    ref = _parse(reference)
    if not as_json:
        say(f"{ref.version}: Pulling from {ref.name}")
    with _progress(ctx) as bar:
        result = api.pull(ref, include=include, verify_key=verify_key or None, trust_dir=trust_dir, options=options,
                          progress=bar)
    _render_transfer(result, "Downloaded", as_json)
    if not as_json:
        for note in result.notes:
            say(f"note: {note}", err=True)
        if result.signatures:
            say(f"({plural(len(result.signatures), 'signature')} came along)")
        if result.verified_by:
            say(f"signed by: {result.verified_by}")
        say(f"digest: {result.digest}")
        status = "Downloaded newer model" if result.updated else "Model is up to date"
        say(f"Status: {status} for {result.reference}")


@cli.command("copy")
@click.argument("source")
@click.argument("destination")
@click.option("--referrers", is_flag=True, help="Also copy what refers to the model (signatures, SBOMs).")
@remote_options
@json_option
@click.pass_context
def copy_command(ctx: click.Context, /, source: str, destination: str, referrers: bool, as_json: bool,
                 **kwargs: Any) -> None:
    """Copy a model from SOURCE to DESTINATION without the local cache.

    Each side is a registry reference or an OCI layout directory, oci:PATH:TAG. Within one
    registry, blobs are mounted instead of copied.

    copy does not verify signatures (ORMB_VERIFY_KEY and ORMB_TRUST_DIR do not apply): every blob is
    checked against its digest, not against a signature.  Verify where the model is loaded (pull,
    export, the storage initializer with --verify-key), or with 'ormb verify REF --remote'.
    """
    with _progress(ctx) as bar:
        result = api.copy_model(source, destination, referrers=referrers, options=_transport(kwargs), progress=bar)
    if as_json:
        print_json(result)
        return
    extra = f", {plural(len(result.referrers), 'referrer')}" if referrers else ""
    say(f"Copied {_full_reference(source)} to {_full_reference(destination)}")
    say(f"digest: {result.digest} ({plural(len(result.transferred), 'blob')} sent, "
               f"{len(result.existing)} already there, {len(result.mounted)} mounted{extra})")


@cli.command()
@click.argument("repository")
@remote_options
@json_option
def tags(repository: str, as_json: bool, **kwargs: Any) -> None:
    """List the tags of REPOSITORY on its registry."""
    if as_json:
        print_json(api.tags(repository, options=_transport(kwargs)))
        return
    for tag_name in api.iter_tags(repository, options=_transport(kwargs)):  # printed as the pages arrive
        say(tag_name)


@cli.command()
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Give the cached model SOURCE a second reference TARGET."""
    ref = api.tag(source, target)
    say(f"{ref.tag}: tagged {ref}")


def _full_reference(text: str) -> str:
    """The reference as ormb understands it (host and tag filled in); an oci:PATH as given."""
    if text.startswith("oci:"):
        return text
    return str(_parse(text))


def _parse(text: str) -> Reference:
    """A reference as the user typed it, the default registry filled in."""
    from ormb.config import load_settings
    from ormb.oci.reference import parse_reference

    return parse_reference(text, load_settings().default_registry)


def _home() -> Path:
    from ormb.config import load_settings

    return load_settings().home


@cli.command()
@click.argument("references", nargs=-1, required=True)
def remove(references: tuple[str, ...]) -> None:
    """Remove references from the local cache (alias: rm); 'ormb prune' frees the space."""
    for reference in references:
        digest = api.remove(reference)
        say(f"Untagged: {_full_reference(reference)} ({digest})")


@cli.command()
@json_option
def prune(as_json: bool) -> None:
    """Delete cached blobs that no reference reaches."""
    result = api.prune()
    if as_json:
        print_json(result)
        return
    say(f"Deleted {result.blobs} blobs, reclaimed {human_size(result.bytes)}")


@cli.command("check")
@json_option
def check_cache(as_json: bool) -> None:
    """Read and hash every cached blob (exit 4 if any does not match its digest).

    Export trusts a blob's verified stamp (its inode and times when its bytes last matched) instead of hashing
    it again; this check trusts none, so it also finds what a stamp cannot see: a flipped bit on the disk, or
    a write by root."""
    result = api.check()
    if as_json:
        print_json(result)
        return
    say(f"Checked {result.blobs} blobs ({human_size(result.bytes)}): all match their digests")


@cli.command()
@json_option
def version(as_json: bool) -> None:
    """Print ormb's version."""
    if as_json:
        print_json({"version": api.version(), "python": sys.version.split()[0]})
    else:
        say(f"ormb {api.version()} (Python {sys.version.split()[0]})")


@cli.command("pull-and-export")
@click.argument("source")
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--layout", type=click.Choice(["triton", "mlflow", "none"]), default="triton", show_default=True,
              help="triton: DEST/1/<files> (also TF Serving); mlflow: DEST/<files>; none: DEST/model/<files>.")
@click.option("--no-metadata", is_flag=True, help="Do not write DEST/ormbfile.yaml.")
@max_expand_option
@verify_options
@remote_options
@json_option
@click.pass_context
def pull_and_export(ctx: click.Context, /, source: str, destination: str, layout: str, no_metadata: bool,
                    max_expand: int | None, verify_key: tuple[str, ...], trust_dir: str | None, as_json: bool,
                    **kwargs: Any) -> None:
    """Fetch SOURCE (ormb://HOST/REPO:TAG or HOST/REPO:TAG) from its registry into DESTINATION for a model server.

    This is the storage initializer of KServe and Seldon Core init containers (also installed
    as 'ormb-storage-initializer SRC DEST'). Nothing goes through the local cache. Credentials:
    ORMB_USERNAME and ORMB_PASSWORD, else 'ormb login' or a mounted Docker config.json
    (DOCKER_CONFIG). TLS is verified unless --insecure. With --verify-key (ORMB_VERIFY_KEY) the
    signature is checked before the weights are downloaded (ModelPack) or before they move into
    DESTINATION (ormb format).
    """
    from ormb.serving.initializer import pull_and_export as run_initializer

    options = _transport(kwargs)
    with _progress(ctx) as bar:
        result = run_initializer(source, destination, layout=layout, metadata=not no_metadata,
                                 max_expand=max_expand, verify_key=verify_key or None, trust_dir=trust_dir,
                                 options=options, progress=bar)
    if as_json:
        print_json(result)
        return
    say(f"ref:       {result.reference}")
    say(f"digest:    {result.digest}")
    say(f"format:    {result.format or '-'}")
    if result.verified_by:
        say(f"signed by: {result.verified_by}")
    say(f"{result.reference.tag or result.digest}: {plural(len(result.files), 'file')} laid out for "
               f"{layout} in {result.directory}")
    for note in result.notes:
        say(f"note: {note}", err=True)


def _key_password(key: str, from_stdin: bool) -> str | None:
    """The private key's password: standard input with --key-password-stdin, else $ORMB_KEY_PASSWORD (read by
    the library), else asked for without echo when the key is encrypted and there is a terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get(PASSWORD_ENV) is not None or not sys.stdin.isatty():
        return None
    try:
        with open(key, "rb") as handle:
            encrypted = b"ENCRYPTED" in handle.read(64 << 10)
    except OSError:
        return None  # the library says what is wrong with the file
    return click.prompt(f"Password for {key}", hide_input=True, err=True) if encrypted else None


@cli.command()
@click.argument("reference")
@click.option("--key", type=click.Path(dir_okay=False), metavar="KEY.pem",
              help="The private key to sign with (PEM: ECDSA P-256/P-384/P-521 or Ed25519; may be encrypted).")
@click.option("--attach", type=click.Path(dir_okay=False, exists=True), metavar="SIG",
              help="Attach a signature made by 'model_signing sign key' over the model's directory instead.")
@click.option("--key-password-stdin", is_flag=True,
              help="Read the key's password from standard input (else $ORMB_KEY_PASSWORD, else asked for).")
@click.option("--remote", is_flag=True, help="Sign the model in its registry and store the signature there "
              "(default: the local cache; 'ormb push' then carries it).")
@remote_options
@json_option
def sign(reference: str, key: str | None, attach: str | None, key_password_stdin: bool, remote: bool, as_json: bool,
         **kwargs: Any) -> None:
    """Sign REFERENCE (OpenSSF model signing) and store the signature next to it as an OCI referrer.

    \b
    The signature lists every file of the model with its SHA-256, as 'ormb export' lays them out;
    'model_signing verify key' accepts it on the exported directory. No weight byte is read for a
    ModelPack model. Make a key with 'ormb key generate'.
    \b
      ormb sign localhost:5000/team/fashion:v1 --key team.pem
      ormb sign --attach model.sig localhost:5000/team/fashion:v1
    """
    options = _transport(kwargs)
    if (key is None) == (attach is None):
        raise _InputError("give --key KEY.pem to sign, or --attach SIG to attach a signature (one of them)")
    password = _key_password(key, key_password_stdin) if key is not None else None
    result = api.sign(reference, key, password=password, attach=attach, remote=remote, options=options)
    if as_json:
        print_json(result)
        return
    where = f"pushed to {result.reference.name}" if result.remote else \
        f"stored in the local cache; 'ormb push {result.reference}' carries it"
    say(f"ref:       {result.reference}")
    say(f"digest:    {result.digest}")
    say(f"signature: {result.signature} ({where})")
    say(f"key:       {result.fingerprint or '-'}")
    say(f"files:     {result.files}")
    say(f"{result.reference.tag or result.digest}: {'signature attached' if result.attached else 'signed'}")


@cli.command()
@click.argument("reference")
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False), metavar="KEY.pub",
              help="A public key the signature may be made with; repeatable (env ORMB_VERIFY_KEY).")
@click.option("--trust-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Any public key (*.pub, *.pem) in DIR may have made the signature (env ORMB_TRUST_DIR).")
@click.option("--remote", is_flag=True, help="Check the model and its signatures in the registry, not the cache.")
@remote_options
@json_option
def verify(reference: str, keys: tuple[str, ...], trust_dir: str | None, remote: bool, as_json: bool,
           **kwargs: Any) -> None:
    """Check that REFERENCE is signed by a trusted key over exactly its files (exit 4 if not).

    Same paths, same SHA-256, none missing, none added. A ModelPack model in a registry is checked
    without downloading a weight byte.
    """
    result = api.verify(reference, keys=keys or None, trust_dir=trust_dir, remote=remote, options=_transport(kwargs))
    if as_json:
        print_json(result)
        return
    say(f"ref:       {result.reference}")
    say(f"digest:    {result.digest}")
    say(f"signature: {result.signature}")
    say(f"key:       {result.fingerprint} ({result.key})")
    say(f"files:     {result.files}")
    say(f"Verified: {result.reference} is signed by key {result.fingerprint[:16]} "
               f"({plural(result.files, 'file')} as signed)")


@cli.group()
def key() -> None:
    """Signing keys: make a pair for 'ormb sign' and 'ormb verify'."""


@key.command("generate")
@click.argument("private_key", metavar="KEY.pem", type=click.Path(dir_okay=False))
@click.option("--public", "public_key", type=click.Path(dir_okay=False), metavar="KEY.pub",
              help="Where the public key goes (default: KEY.pub beside KEY.pem).")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default="ecdsa-p256", show_default=True,
              help="ecdsa-p256 is what model_signing and cosign verify everywhere; model_signing cannot verify ed25519.")
@click.option("--password-stdin", is_flag=True, help="Encrypt the private key with a password read from standard input.")
@json_option
def key_generate(private_key: str, public_key: str | None, algorithm: str, password_stdin: bool, as_json: bool) -> None:
    """Make a key pair: KEY.pem (private, mode 0600: keep it secret) and KEY.pub (give it to who verifies).

    Never overwrites a file. The fingerprint printed is how ormb, the signature and model_signing
    name the key (sha256sum KEY.pub).
    """
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if password_stdin and not password:
        raise _InputError("--password-stdin read an empty password")
    result = api.generate_key(private_key, public_key, algorithm=algorithm, password=password)
    if as_json:
        print_json(result)
        return
    say(f"private key: {result.private_key} (keep it secret{', encrypted' if password else ''})")
    say(f"public key:  {result.public_key}")
    say(f"algorithm:   {result.algorithm}")
    say(f"fingerprint: {result.fingerprint}")


@cli.group()
def registry() -> None:
    """The embedded OCI registry: one process, blobs as files, metadata in SQLite."""


_ROOT_OPTION = click.option("--root", type=click.Path(file_okay=False), default=None,
                            help="The registry's storage (default: $ORMB_HOME/registry).")


def _existing_root(root: str | None) -> Path:
    from pathlib import Path

    root_dir = Path(root) if root else _home() / "registry"
    if not (root_dir / "registry.db").exists():
        raise OrmbError(f"{root_dir} holds no registry", "give the --root that 'ormb registry serve' used")
    return root_dir


@registry.command()
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Where blobs and the database live (default: $ORMB_HOME/registry).")
@click.option("--addr", default="127.0.0.1:5000", show_default=True,
              help="HOST:PORT to listen on; loopback unless you choose otherwise (port 0: any free port).")
@click.option("--htpasswd", type=click.Path(exists=True, dir_okay=False),
              help="bcrypt htpasswd file: users must log in (create entries with 'htpasswd -B').")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="YAML rules: which users may pull/push/delete which repository patterns.")
@click.option("--anonymous-pull", is_flag=True,
              help="Let users who are not logged in pull (without --policy; a policy says it with 'anonymous' rules).")
@click.option("--auth-scheme", type=click.Choice(["bearer", "basic"]), default="bearer", show_default=True,
              help="How clients authenticate: tokens from this registry's /token endpoint, or Basic on each request.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key.")
@click.option("--no-ui", is_flag=True, help="Serve the API only, without the model catalog pages.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (each runs --threads requests at once).")
@click.option("--threads", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Requests served at once per worker; more wait for a free thread.")
@click.option("--max-connections", type=click.IntRange(1, 100000), default=4000, show_default=True,
              help="Open connections per worker; beyond it new ones wait in the kernel's queue.")
@click.option("--max-waiting", type=click.IntRange(1, 100000), default=256, show_default=True,
              help="Requests waiting for a free thread per worker; beyond it new connections are answered 503.")
@click.option("--client-timeout", type=click.FloatRange(0.5, 3600), default=60, show_default=True,
              help="Seconds a client may stall mid-request (sending or receiving) before it is cut off.")
@click.option("--keepalive", type=click.FloatRange(0.5, 3600), default=15, show_default=True,
              help="Seconds an idle connection is kept open.")
@click.option("--token-lifetime", type=click.IntRange(10, 86400), default=300, show_default=True,
              help="Seconds a token from /token is valid.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="'info' logs one line per request (the access log); 'warning' only problems.")
@click.option("--public-host", "public_hosts", multiple=True, metavar="NAME",
              help="A host name clients reach the registry by (a DNS name, a proxy's), besides loopback names and "
                   "the --addr host; other Host headers are refused (DNS rebinding). Repeatable.")
@click.option("--sparse-manifests", is_flag=True,
              help="Accept manifests and indexes whose blobs or child manifests were not pushed (a mirror of some "
                   "platforms of an index); pulls of the missing parts get 404.")
@click.option("--trust-key", "trust_keys", multiple=True, type=click.Path(dir_okay=False), metavar="KEY.pub",
              help="The catalog shows a model as signed, with the key's fingerprint, when a signature by this public "
                   "key matches its files. Repeatable.")
@click.option("--trust-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Like --trust-key for every public key (*.pub, *.pem) in DIR.")
def serve(root: str | None, addr: str, htpasswd: str | None, policy: str | None, anonymous_pull: bool,
          auth_scheme: str, tls_cert: str | None, tls_key: str | None, no_ui: bool, workers: int, threads: int,
          max_connections: int, max_waiting: int, client_timeout: float, keepalive: float, token_lifetime: int,
          log_level: str, public_hosts: tuple[str, ...], sparse_manifests: bool, trust_keys: tuple[str, ...],
          trust_dir: str | None) -> None:
    """Run an OCI registry with a model catalog page at /.

    \b
    Policy file format:
      rules:
        - users: [alice]            # names, '*' = any logged-in user, 'anonymous'
          repositories: ["alice/*"] # glob patterns
          actions: [pull, push, delete]

    Served by gunicorn; stops cleanly on Ctrl-C or SIGTERM (requests under way are finished).
    """
    from pathlib import Path

    from ormb.oci.reference import is_loopback_host
    from ormb.server.names import Listening
    from ormb.server.serve import LISTENING, STOPPED, ServeOptions, parse_addr
    from ormb.server.serve import serve as run_server

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if policy and not htpasswd:
        raise click.UsageError("--policy needs --htpasswd: a policy names users who log in")
    host, _ = parse_addr(addr)
    if not is_loopback_host(host) and not tls_cert:
        say(f"warning: listening on {addr} without TLS: passwords and models cross the network in clear",
                   err=True)
    root_dir = Path(root) if root else _home() / "registry"
    options = ServeOptions(root_dir, addr, Path(htpasswd) if htpasswd else None, Path(policy) if policy else None,
                           anonymous_pull, Path(tls_cert) if tls_cert else None, Path(tls_key) if tls_key else None,
                           auth_scheme, not no_ui, workers, threads, max_connections, max_waiting, client_timeout, keepalive,
                           token_lifetime, log_level, public_hosts, sparse_manifests,
                           tuple(Path(k) for k in trust_keys), Path(trust_dir) if trust_dir else None)
    options.check()  # before anything is created or started (an unusable key file too)
    auth = "open to everyone on this address" if not htpasswd else f"users from {htpasswd}"
    from ormb.config import load_settings

    default_registry = load_settings().default_registry

    def ready(listening: Listening) -> None:
        where = f"bound to {listening.bound}" + (f", {listening.kind}" if listening.kind else "")
        say(f"{LISTENING}{listening.url} ({where}; storage {root_dir}, {auth})", err=True)
        short = ", or NAME:TAG for short (the default registry)" if listening.host == default_registry else ""
        local = " on this machine" if listening.kind == "every address" else ""
        flag = listening.client_flag
        how = f" (with {flag}: ormb's default for this name is the other scheme)" if flag else ""
        login = f"; log in with 'ormb login {flag + ' ' if flag else ''}{listening.host}'" if htpasswd else ""
        say(f"models are named {listening.host}/NAME:TAG{local}{short}{how}{login}", err=True)
        for name in public_hosts:
            say(f"clients elsewhere: {name.lower()}/NAME:TAG (--public-host)", err=True)
        if listening.kind == "every address" and not public_hosts:
            say("clients elsewhere: this machine's name or address; say which with --public-host NAME, "
                       "and the catalog copies it", err=True)
        if not no_ui:
            say(f"model catalog: {listening.url}/", err=True)

    run_server(options, ready, lambda: say(STOPPED, err=True))


@registry.command()
@_ROOT_OPTION
@click.option("--grace", type=float, default=3600, show_default=True,
              help="Keep unreferenced blobs and upload sessions touched within this many seconds (a push may be under way).")
@json_option
def gc(root: str | None, grace: float, as_json: bool) -> None:
    """Free blobs that no manifest references; safe while the registry serves."""
    from ormb.server.store import Store

    result = Store(_existing_root(root)).gc(grace)
    if as_json:
        print_json({"blobs": result.blobs, "bytes": result.bytes, "links": result.links, "uploads": result.uploads})
    else:
        say(f"Deleted {result.blobs} blobs, reclaimed {human_size(result.bytes)} "
                   f"({result.links} unreferenced links and {result.uploads} stale uploads dropped)")


@registry.command()
@_ROOT_OPTION
@click.argument("users", nargs=-1)
@click.option("--all", "everyone", is_flag=True, help="Revoke every token of every user (anonymous ones too).")
def revoke(root: str | None, users: tuple[str, ...], everyone: bool) -> None:
    """Invalidate the tokens already issued to USERS (access and refresh tokens), before they expire.

    A running registry sees it within a second.  To lock a user out, also remove them from the
    htpasswd file and restart the registry (tokens outlive restarts: their key is stored).
    """
    from ormb.server.access import EVERYONE
    from ormb.server.store import Store

    if not users and not everyone:
        raise UsageError("name the users whose tokens to revoke, or give --all")
    if users and everyone:
        raise UsageError("give either user names or --all, not both")
    store = Store(_existing_root(root))
    for user in (EVERYONE,) if everyone else users:
        store.revoke(user)
    say("Revoked every token" if everyone else f"Revoked the tokens of {', '.join(users)}")


@registry.command()
@_ROOT_OPTION
@click.option("--repair", is_flag=True,
              help="Forget blobs whose file is missing or corrupt (a new push uploads them again) and remove stray files.")
@json_option
def check(root: str | None, repair: bool, as_json: bool) -> None:
    """Verify every blob's digest and that every database row has its file; exit 4 when something is wrong."""
    from ormb.server.store import Store

    result = Store(_existing_root(root)).check(repair)
    if as_json:
        print_json({"blobs": result.blobs, "missing": result.missing, "corrupt": result.corrupt,
                    "orphans": result.orphans, "repaired": result.repaired})
    else:
        for kind, digests in (("missing", result.missing), ("corrupt", result.corrupt), ("no row", result.orphans)):
            for digest in digests:
                say(f"{kind}: {digest}")
        say(f"Checked {result.blobs} blobs: {len(result.missing)} missing, {len(result.corrupt)} corrupt, "
                   f"{len(result.orphans)} files without a row" + (" (repaired)" if repair else ""))
    if (result.missing or result.corrupt) and not repair:
        raise IntegrityError(f"{len(result.missing) + len(result.corrupt)} blobs are missing or corrupt",
                             "run 'ormb registry check --repair'; the next push of each uploads it again")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``Error:`` line and a meaningful exit code, a traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="ormb", standalone_mode=False)
    except click.exceptions.Abort:
        say("Error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except OrmbError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        say(f"Error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        say("Error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        say(f"Error: internal error: {type(exc).__name__}: {exc} (run with --debug and report it)", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def storage_initializer() -> None:
    """``ormb-storage-initializer SRC DEST [options]``: ``ormb pull-and-export`` under the name init containers use."""
    sys.exit(main(["pull-and-export", *sys.argv[1:]]))
