"""What the commands import and the light stand-ins that keep heavy modules out of them (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.sax import saxutils

from hypothesis import given
from hypothesis import strategies as st

from ggufx.render import chart


@given(st.text(alphabet=st.sampled_from(list("ab&<>\"'\n\r\t é;#x"))))
def test_chart_escapes_as_saxutils_does(text: str) -> None:
    """The chart's escape and quoteattr write exactly what xml.sax.saxutils writes (which the chart
    no longer imports: it costs urllib.request, http.client, ssl and email)."""
    assert chart.escape(text) == saxutils.escape(text)
    assert chart.quoteattr(text) == saxutils.quoteattr(text)


def test_report_with_its_chart_imports_no_network_module(gemma_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = (
        "import sys\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main(['report', {str(gemma_path)!r}, '--gpus', '24GiB', '-o', {str(out)!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(','.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = set(proc.stderr.strip().splitlines()[-1].split(","))
    assert "ggufx.render.chart" in mods and "<svg" in out.read_text()
    assert not mods & {"http.client", "ssl", "urllib.request", "email", "xml.sax"}


def test_a_command_collects_cycles_less_often(tmp_path: Path) -> None:
    """The CLI raises the cyclic collector's first threshold while a command runs (the memory model's
    short-lived containers are freed by reference counting; collecting every 700 allocations cost 5
    to 10% of `report` and `mem --fit`), and never lowers one set higher."""
    from tests.support import FIXTURES

    code = (
        "import gc, sys\n"
        "gc.set_threshold(int(sys.argv[1]), 10, 10)\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main(['info', {str(FIXTURES / 'all-types-v3.gguf')!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(gc.get_threshold(), file=sys.stderr)\n"
    )
    for before, after in ((700, "(100000, 10, 10)"), (50_000, "(100000, 10, 10)"), (200_000, "(200000, 10, 10)")):
        proc = subprocess.run([sys.executable, "-c", code, str(before)], capture_output=True, text=True, check=True)
        assert proc.stderr.strip().splitlines()[-1] == after


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


LAUNCH = "import sys; from ggufx.cli import run; run()"


def test_the_process_ends_as_the_interpreter_would(gemma_path: Path) -> None:
    """`ggufx` skips Python's teardown once a command is done (end_process): the same output, the
    same exit status (0, 1 does not fit, 2 bad input), and atexit handlers still run."""
    from click.testing import CliRunner

    from ggufx.cli import main

    for args, status in (
        (["tensors", str(gemma_path)], 0),
        (["mem", str(gemma_path), "-c", "32768", "--gpus", "100MiB"], 1),
        (["info", str(gemma_path) + ".missing"], 2),
    ):
        proc = _run(LAUNCH, *args)
        assert proc.returncode == status, (args, proc.stderr)
        ref = CliRunner().invoke(main, args)
        assert (proc.returncode, proc.stdout) == (ref.exit_code, ref.stdout), args
    hook = "import atexit, sys; atexit.register(lambda: print('atexit ran', file=sys.stderr)); " + LAUNCH
    proc = _run(hook, "info", str(gemma_path))
    assert proc.returncode == 0 and proc.stderr == "atexit ran\n" and "gemma3" in proc.stdout


def test_where_the_ending_could_differ_the_interpreter_ends_it(gemma_path: Path) -> None:
    """A thread still running is waited for, a message as exit code is printed (exit 1): the
    interpreter's own ending, as before."""
    import pytest

    from ggufx.cli import end_process

    late = (
        "import sys, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', file=sys.stderr))).start()\n" + LAUNCH
    )
    proc = _run(late, "info", str(gemma_path))
    assert proc.returncode == 0 and "thread done" in proc.stderr
    with pytest.raises(SystemExit) as e:
        end_process("a message")
    assert e.value.code == "a message"


def _cli_exit_printing(expr: str) -> str:
    """A script that runs the CLI on its own arguments and prints ``exit CODE`` and ``expr``'s value."""
    return (
        "import sys\n"
        "from ggufx.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        f"    print('exit', e.code, {expr})\n"
    )


def test_a_short_option_skips_clicks_did_you_mean_list(gemma_path: Path) -> None:
    """`-c 4096` is read as the short option it is without building click's "did you mean" list of the
    long options it is not (difflib: 4 M instructions of `mem`): the same answer as `--ctx 4096`, and
    every parse error exactly as click words it (an unknown long option still gets its list)."""
    code = _cli_exit_printing("'difflib' in sys.modules")
    short = _run(code, "mem", str(gemma_path), "-c", "4096", "-ctk", "q8_0", "--json")
    long = _run(code, "mem", str(gemma_path), "--ctx", "4096", "--cache-type-k", "q8_0", "--json")
    assert short.stdout.splitlines()[-1] == "exit 0 False"
    assert short.stdout == long.stdout and '"n_ctx": 4096' in short.stdout
    unknown = _run(code, "mem", str(gemma_path), "--ctxx", "4096")
    assert "No such option '--ctxx'. (Did you mean one of: '--ctx', '--ctx-size', '--fit-ctx'?)" in unknown.stderr
    for bad, message in (
        ("-cx", "Invalid value for '--ctx' / '-c' / '--ctx-size': 'x' is not a whole number."),
        ("-Z", "ggufx: error: No such option '-Z'.\n"),
    ):
        proc = _run(code, "mem", str(gemma_path), bad)
        assert message in proc.stderr and proc.stdout.splitlines()[-1].startswith("exit 2")


def test_mem_imports_no_other_commands_module(gemma_path: Path) -> None:
    """`ggufx mem` imports its own command module only (ggufx.cli.memory): the option objects of the
    other commands (the analysis commands' were 3.8 M instructions of its start) are never built."""
    from ggufx.cli import COMMANDS

    code = _cli_exit_printing("','.join(sorted(m for m in sys.modules if m.startswith('ggufx.cli.')))")
    proc = _run(code, "mem", str(gemma_path), "-c", "4096", "--json")
    last = proc.stdout.splitlines()[-1].split()
    assert last[:2] == ["exit", "0"], proc.stderr
    loaded = set(last[2].split(","))
    commands = {f"ggufx.cli.{module}" for module, _, _ in COMMANDS.values()}
    assert loaded & commands == {"ggufx.cli.memory"}, loaded
