"""The ``vitcompress`` command line: the entry point, the command table and error reporting.

The commands live in ``vitcompress.commands`` (one module per family of commands) and are imported
when they run, so ``vitcompress --version`` and ``import vitcompress.cli`` stay light. Every error
a user can cause is a ``VitCompressError``: printed as one ``error: ...`` line with exit code 2,
its parameter names shown as the command's flags (``force=True`` -> ``--force``). A full disk, a
read-only or forbidden folder (``OSError`` with ENOSPC, EDQUOT, EROFS, EACCES, EPERM) is one line
too; Ctrl-C is ``error: interrupted`` with exit code 130.
"""

from __future__ import annotations

if __name__ == "cli":  # linked into the package as vitcompress/cli.py: one file, one module name
    raise ImportError("import the command line as vitcompress.cli, not by its file name")

import errno
import importlib
import logging
import sys

import click

from vitcompress.commands.options import command_flags
from vitcompress.errors import VitCompressError

# command name -> (module in vitcompress.commands, function)
COMMANDS = {
    "prune": ("prune", "prune"),
    "info": ("prune", "info"),
    "models": ("prune", "models"),
    "tokens": ("tokens", "tokens"),
    "quantize": ("quantize", "quantize_cmd"),
    "export": ("export", "export_cmd"),
    "bench": ("bench", "bench"),
    "train": ("train", "train"),
    "finetune": ("train", "finetune"),
    "eval": ("train", "eval_cmd"),
    "pipeline": ("train", "pipeline"),
    "profile": ("latency", "profile"),
    "compress": ("latency", "compress_cmd"),
}


class _Commands(click.Group):
    """A group whose commands are imported from ``vitcompress.commands`` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f"vitcompress.commands.{module}"), attr)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vitcompress")
def cli() -> None:
    """Prune, token-reduce, export and benchmark Vision Transformers."""


class _EchoHandler(logging.Handler):
    """The library's progress lines (``logging`` at INFO) printed as plain lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turn every user error into one line and exit code 2."""
    log = logging.getLogger("vitcompress")
    handler, level = _EchoHandler(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        cli.main(args=argv, prog_name="vitcompress", standalone_mode=False)
    except VitCompressError as e:
        click.echo(f"error: {worker_message(e.with_flags(_flags(argv, e.params)))}", err=True)
        return 2
    except click.exceptions.Abort as e:  # click turns Ctrl-C (KeyboardInterrupt) into Abort
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("error: interrupted", err=True)
            return 130
        click.echo("error: aborted", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a path or model name longer than the file system takes
            name = str(e.filename or "")
            click.echo(f"error: name too long ({len(name)} characters: {name[:40]!r}...); pass a shorter one", err=True)
            return 2
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        click.echo(f"error: {e.strerror}{where}; free space or choose a writable path", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see `vitcompress {_cmd(argv)}--help`)", err=True)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return 0


#: operating-system errors that are the machine's state, not a bug: reported in one line
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def worker_message(message: str) -> str:
    """A ``VitCompressError`` raised in a data-loader worker process reaches the main process with
    the worker's traceback folded into its message; keep the original message only."""
    marker = "VitCompressError: "
    if message.startswith("Caught VitCompressError") and marker in message:
        return message.rsplit(marker, 1)[1].strip()
    return message


def _cmd(argv) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return f"{argv[0]} " if argv and not argv[0].startswith("-") else ""


#: parameters that errors of other commands name too, and the command whose flag shows them: an
#: engine error of ``bench`` says how to rebuild the engine (``trt=True`` -> ``--trt``)
OTHER_COMMAND_PARAMS = {"trt": "export"}


def _flags(argv, params=()) -> dict[str, str]:
    """``parameter name -> flag`` of the command that ran (empty when none did); those of ``params``
    it has no flag for and ``OTHER_COMMAND_PARAMS`` lists take that command's flag."""
    name = _cmd(argv).strip()
    if name not in COMMANDS:
        return {}
    cmd = cli.get_command(None, name)
    flags = command_flags(cmd) if cmd is not None else {}
    for p in params:
        other = cli.get_command(None, OTHER_COMMAND_PARAMS.get(p, ""))
        if p not in flags and other is not None:
            flags.setdefault(p, command_flags(other).get(p, p))
    return flags


if __name__ == "__main__":
    sys.exit(main())
