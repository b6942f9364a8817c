"""The ``ggufx`` command line as click declares it: the group, its commands, one error format.

Command modules are imported only when their command runs (or when ``--help`` lists them), so
start-up stays at the cost of click itself. Every :class:`~ggufx.errors.GGUFError` becomes one line
``ggufx: error: FILE: offset N: what was wrong`` on stderr and exit code 2; ``--debug`` shows the
traceback instead. Usage errors (click's and ggufx's) are one line ``ggufx: error: ...``, exit 2.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
import sys
from typing import Any, NoReturn

import click

from ggufx._version import __version__
from ggufx.cli._common import EXIT_USAGE, REMOTE_CONFIG, server_aware, set_remote_option
from ggufx.cli._process import end_process, internal_error_line, os_error_line, raise_gc_threshold
from ggufx.errors import GGUFError

# command name -> (module, function, one-line help shown by `ggufx --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("inspect", "info", "Summary: architecture, parameters, BPW, type histogram."),
    "tensors": ("inspect", "tensors", "Every tensor: type, shape, elements, bytes, BPW, offset."),
    "meta": ("inspect", "meta", "Metadata keys with their GGUF types, or one raw value."),
    "roles": ("analyze", "roles", "Where the bits go: types, bytes and BPW per tensor role."),
    "layers": ("analyze", "layers", "Layer grid: kind (attention, SWA, recurrent, MoE) and type per role."),
    "recipe": ("analyze", "recipe", "The llama-quantize recipe that reproduces this quant."),
    "mem": ("memory", "mem", "Memory at a context length (KV, recurrent state, weights); --fit a GPU."),
    "pick": ("pick", "pick", "Which quant to download: every model of a repository or folder against your GPUs."),
    "report": ("analyze", "report", "One-page HTML or Markdown report with a layer heat map."),
    "diff": ("analyze", "diff_", "Type, tensor and metadata differences between two quants."),
    "hash": ("integrity", "hash_", "Per-tensor hashes and a fingerprint that ignores metadata and sharding."),
    "manifest": ("integrity", "manifest", "Record fingerprints, tensor and metadata hashes in a manifest."),
    "verify": ("integrity", "verify", "Check files against a manifest: which tensors or keys differ."),
    "check": ("integrity", "check_", "Check files against a TOML policy (PASS/FAIL per rule, JUnit XML)."),
    "scan": ("integrity", "scan", "Audit every GGUF in folders, the Hugging Face cache or the Ollama store."),
    "set": ("edit", "set_", "Set a metadata key in place (crash-safe, no requantizing)."),
    "delete": ("edit", "delete", "Delete metadata keys."),
    "rename": ("edit", "rename", "Rename a metadata key."),
    "edit": ("edit", "edit_", "Several metadata changes as one transaction."),
    "imatrix": (
        "companions",
        "imatrix",
        "Importance matrix: per-tensor importance and rank per role, beside a quant's types.",
    ),
    "template": ("template", "template", "Chat templates: show, set, render, lint, diff, info."),
    "mcp": ("agent", "mcp", "MCP server: the read-only tools for agents (needs ggufx[mcp])."),
}


_TYPE_WORDS = {
    "is not a valid integer range.": "is not a whole number.",
    "is not a valid integer.": "is not a whole number.",
    "is not a valid float range.": "is not a number.",
    "is not a valid float.": "is not a number.",
}


def usage_error(e: click.UsageError) -> NoReturn:
    """Every usage error in one format: ``ggufx: error: ...`` on one line of stderr, exit 2 (click's
    own four-line Usage/Try/Error block is not used)."""
    message = " ".join(e.format_message().split())
    for said, meant in _TYPE_WORDS.items():  # click's names of its types ('32k' is not a valid integer range)
        message = message.replace(said, meant)
    short = re.search(r"'((\d+)[kK])' is not a whole number", message)
    if short and isinstance(e, click.BadParameter) and e.param is not None and e.param.name == "ctx":
        n = int(short.group(2))  # llama.cpp's std::stoi reads the digits and stops: -c 32k is a 32-token context
        message += f" Write {n * 1024} for {n}K tokens (llama.cpp would read {short.group(1)} as {n})."
    click.echo(f"ggufx: error: {message}", err=True)
    raise click.exceptions.Exit(EXIT_USAGE)


# whether this process is the `ggufx` command's own (main called without arguments): only then does a command
# install the code cache (a library user's or a test's process is left alone)
_OWN_PROCESS = False


class LazyGroup(click.Group):
    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        raise_gc_threshold()
        if args is not None or not standalone_mode:  # called from Python (tests, a script): return or raise
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        global _OWN_PROCESS
        _OWN_PROCESS = True  # the command's module installs the code cache (get_command)
        try:  # the process's own command line: click ends it with SystemExit
            super().main(None, prog_name, complete_var, True, **extra)
        except SystemExit as e:
            end_process(e.code)
        raise AssertionError("click's standalone main returned")  # pragma: no cover

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        if _OWN_PROCESS:  # @dataclass's generated methods compiled once, not at every start (ggufx.cli._codecache)
            from ggufx.cli._codecache import install

            install(name)  # the command's own file: the texts of the classes its modules make
        module = importlib.import_module(f"ggufx.cli.{entry[0]}")
        if _OWN_PROCESS:  # the command's own process: what its imports made lives to its end
            gc.freeze()
        return server_aware(getattr(module, entry[1]))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # short help from the table above, so `ggufx --help` imports no command module
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry[2]) for name, entry in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        finally:
            remote = ctx.meta.get(REMOTE_CONFIG)  # built only by a command that read a URL
            if ctx.params.get("debug") and remote is not None:
                from ggufx.io.remote import stats_of

                stats = stats_of(remote)
                if stats.requests:
                    click.echo(
                        f"ggufx: debug: {stats.requests} HTTP request(s), {stats.bytes:,} bytes received", err=True
                    )

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:  # `ggufx --bogus`: the group's own options
            usage_error(e)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a command's options and arguments, as click or ggufx found them wrong
            usage_error(e)
        except GGUFError as e:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"ggufx: error: {e.one_line()}", err=True)
            ctx.exit(EXIT_USAGE)
        except BrokenPipeError:
            # `ggufx tensors big.gguf | head`: not an error
            sys.stderr.close()
            ctx.exit(0)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except OSError as e:  # the system refused (-o into a missing folder, a full disk): not a bug in ggufx
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(os_error_line(e), err=True)
            ctx.exit(EXIT_USAGE)
        except Exception as e:  # a bug in ggufx: still one line, never a traceback without --debug
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(internal_error_line(e), err=True)
            ctx.exit(EXIT_USAGE)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ggufx")
@click.option(
    "--debug",
    is_flag=True,
    help="Show a traceback instead of a one-line error; log every HTTP request of a remote source.",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Audit and fix GGUF model files (llama.cpp, Ollama, LM Studio).

    Reads only headers: inspecting a 200 GB model costs milliseconds. Read-only commands also
    take https:// URLs and hf://ORG/REPO[@REVISION]/FILE, fetching only the header.

    \b
    Examples:
      ggufx info model.gguf
      ggufx tensors model.gguf --type Q6_K --grep ffn_down
      ggufx meta model.gguf tokenizer.chat_template > template.jinja
      ggufx info hf://unsloth/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf

    Exit codes: 0 ok, 1 a check failed, 2 usage or input error.
    """
    if debug:  # remote sources log every request (this invocation's RemoteConfig, see _common)
        set_remote_option(ctx, "debug", True)
    if os.environ.get("NO_COLOR"):  # https://no-color.org: set and not empty, no colour even on a terminal
        ctx.color = False  # the command's context inherits it
