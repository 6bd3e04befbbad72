"""``ormb``: commands, each a thin wrapper over a function of :mod:`ormb.api`."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import click

from ormb import api
from ormb.cli.render import RichProgress, human_size, human_time, print_json, print_table, to_jsonable
from ormb.errors import OrmbError
from ormb.model.gzipstream import COMPRESSIONS
from ormb.progress import ProgressListener

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")


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
@click.version_option(api.version(), "--version", prog_name="ormb")
def cli(debug: bool, no_progress: bool) -> None:
    """ormb manages machine-learning models the way Docker manages images.

    \b
    A model directory holds ormbfile.yaml (metadata) and model/ (the files):
      ormb save ./fashion localhost:5000/team/fashion:v1    pack it into the local cache
      ormb export localhost:5000/team/fashion:v1 -d out     unpack it again
      ormb models                                           list the cache

    A reference without a registry host uses $ORMB_REGISTRY, else 'registry' in
    $ORMB_HOME/config.yaml, else localhost:5000.  The cache lives in $ORMB_HOME
    (default ~/.ormb).

    \b
    Exit codes: 0 ok, 1 error, 2 bad input (reference, ormbfile.yaml, model files,
    usage), 3 not found, 4 corrupt or unsafe content, 70 internal error, 130 interrupted.
    """


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.argument("reference")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="stored", show_default=True,
              help="stored: gzip without compression, byte-for-byte reproducible on any machine and fastest; "
                   "fast/best: smaller layers, reproducible only on the same machine type.")
@json_option
@click.pass_context
def save(ctx: click.Context, directory: str, reference: str, compression: str, as_json: bool) -> None:
    """Pack DIRECTORY (ormbfile.yaml + model/) into the local cache as REFERENCE.

    Without an ormbfile.yaml the format is guessed from the file names; the directory is
    never written to.
    """
    with _progress(ctx) as bar:
        result = api.save(directory, reference, compression=compression, progress=bar)
    if as_json:
        print_json(result)
        return
    for skipped in result.skipped:
        click.echo(f"warning: skipped {skipped}", err=True)
    if result.format_guessed:
        click.echo(f"note: no format in {directory}/ormbfile.yaml; guessed {result.format} from the file names",
                   err=True)
    click.echo(f"ref:       {result.reference}")
    click.echo(f"digest:    {result.digest}")
    click.echo(f"size:      {human_size(result.size)}")
    click.echo(f"format:    {result.format}")
    click.echo(f"{result.reference.tag}: saved")


@cli.command()
@click.argument("reference")
@click.option("-d", "--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to export into; created if needed.")
@click.option("--no-metadata", is_flag=True, help="Do not write ormbfile.yaml.")
@json_option
@click.pass_context
def export(ctx: click.Context, reference: str, directory: str, no_metadata: bool, as_json: bool) -> None:
    """Unpack REFERENCE from the local cache into a directory (model/ and ormbfile.yaml).

    Existing files are replaced whole; nothing is written if the layer is corrupt or unsafe.
    """
    with _progress(ctx) as bar:
        result = api.export(reference, directory, metadata=not no_metadata, progress=bar)
    if as_json:
        print_json(result)
        return
    click.echo(f"ref:       {result.reference}")
    click.echo(f"digest:    {result.digest}")
    count = len(result.files)
    click.echo(f"{result.reference.tag or result.digest}: exported to {result.directory} "
               f"({count} file{'' if count == 1 else 's'})")


@cli.command()
@json_option
def models(as_json: bool) -> None:
    """List the models in the local cache (alias: list)."""
    found = api.models()
    if as_json:
        print_json(found)
        return
    rows = [[m.reference.name, m.reference.tag or "<none>", m.digest.partition(":")[2][:12], m.format,
             human_time(m.created), human_size(m.size)] for m in found]
    print_table(["REPOSITORY", "TAG", "DIGEST", "FORMAT", "CREATED", "SIZE"], rows)


@cli.command()
@click.argument("reference")
@json_option
def inspect(reference: str, as_json: bool) -> None:
    """Show a cached model's metadata, files and digests."""
    details = api.inspect(reference)
    if as_json:
        print_json(details)
        return
    click.echo(f"ref:       {details.reference}")
    click.echo(f"digest:    {details.digest}")
    click.echo(f"size:      {human_size(details.size)}")
    click.echo(f"format:    {details.metadata.format or '-'}")
    click.echo(f"created:   {details.created.isoformat() if details.created else '-'}")
    click.echo(f"config:    {details.config['digest']} ({details.config['mediaType']})")
    for layer in details.layers:
        click.echo(f"layer:     {layer['digest']} ({layer['mediaType']}, {human_size(int(str(layer['size'])))})")
    metadata: dict[str, Any] = to_jsonable(details.metadata)
    metadata.pop("directoryStructure", None)
    metadata.pop("format", None)
    if metadata:
        import yaml

        click.echo("metadata:")
        click.echo("  " + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip().replace("\n", "\n  "))
    click.echo(f"files:     {len(details.files)}")
    for name in details.files:
        click.echo(f"  {name}")


@cli.command()
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Give the cached model SOURCE a second reference TARGET."""
    ref = api.tag(source, target)
    click.echo(f"{ref.tag}: tagged {ref}")


@cli.command()
@click.argument("references", nargs=-1, required=True)
def remove(references: tuple[str, ...]) -> None:
    """Remove references from the local cache (alias: rm); 'ormb prune' frees the space."""
    for reference in references:
        digest = api.remove(reference)
        click.echo(f"Untagged: {reference} ({digest})")


@cli.command()
@json_option
def prune(as_json: bool) -> None:
    """Delete cached blobs that no reference reaches."""
    result = api.prune()
    if as_json:
        print_json(result)
        return
    click.echo(f"Deleted {result.blobs} blobs, reclaimed {human_size(result.bytes)}")


@cli.command()
@json_option
def version(as_json: bool) -> None:
    """Print ormb's version."""
    if as_json:
        print_json({"version": api.version(), "python": sys.version.split()[0]})
    else:
        click.echo(f"ormb {api.version()} (Python {sys.version.split()[0]})")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``Error:`` line and a meaningful exit code, a traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="ormb", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except OrmbError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: internal error: {type(exc).__name__}: {exc} (run with --debug and report it)", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
