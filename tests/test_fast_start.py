"""The fast start (ggufx.cli._fast): ``ggufx mem`` without click, reading its command line exactly as click would.

Three proofs: the option table is click's declaration as it stands (tools/gen_cli_specs.py --check); over a corpus of
command lines (every option with values click takes and refuses, the forms click reads specially), wherever the fast
start reads a line its parameters and the options given are click's own (``make_context``), and it declines every line
click refuses; and run as the ``ggufx`` program, both starts answer byte for byte the same (stdout, stderr, exit
status), the fast one without importing click.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.core import ParameterSource

from ggufx.cli._fast import FAST, parse
from ggufx.cli._specs import SPECS
from ggufx.cli.inspect import info
from ggufx.cli.memory import mem

COMMANDS = {"mem": mem, "info": info}

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = "import sys; sys.argv[0] = 'ggufx'; from ggufx.cli import run; run()"
# prints, at the process's end, whether click was imported (end_process runs the atexit handlers)
WATCH = "import atexit, sys; atexit.register(lambda: print('click:', 'click' in sys.modules, file=sys.stderr)); "
# an interrupt (Ctrl-C) while the command's modules load: the click group loads them inside click's main
INTERRUPT = (
    "import sys\n"
    "class Stop:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'ggufx.results.memory':\n"
    "            raise KeyboardInterrupt\n"
    "sys.meta_path.insert(0, Stop())\n"
)


def test_the_option_table_is_click_s_declaration() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_cli_specs.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_cli_specs", ROOT / "tools" / "gen_cli_specs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_table_declines_what_it_does_not_copy() -> None:
    gen = _gen()

    def command(*options: Any, **settings: Any) -> click.Command:
        def f(**kw: Any) -> None:
            pass

        for option in options:
            f = option(f)
        return click.command(context_settings=settings)(f)

    plain = gen.spec_of("t", command(click.option("--n", type=int, default=1)))
    assert plain["options"] == {"--n": ("n", "int", None)} and plain["defaults"] == {"n": 1}
    # click warns on stderr where a deprecated option is given: the command line goes to click
    spec = gen.spec_of("t", command(click.option("--n", type=int, default=1, deprecated=True)))
    assert spec["options"] == {"--n": ("", "decline")}
    # what click does where an option is not given is no value the table can hold
    for option in (
        click.option("--n", type=int, required=True),
        click.option("--n", type=int, default=lambda: 1),
        click.option("--n", type=int, default=1, prompt=True),
    ):
        with pytest.raises(SystemExit):
            gen.spec_of("t", command(option))
    for settings in ({"auto_envvar_prefix": "GGUFX"}, {"default_map": {"n": 2}}, {"token_normalize_func": str.lower}):
        with pytest.raises(SystemExit):
            gen.spec_of("t", command(click.option("--n", type=int, default=1), **settings))
    assert gen.spec_of("t", command(click.option("--n", type=int), help_option_names=["-h"]))["options"]


def _click(args: list[str], command: str = "mem") -> tuple[dict[str, object], set[str]] | None:
    # click's parsing of the command as the group serves it (server_aware may have made it a SectionedCommand or
    # a ServerAwareCommand in this process), less ServerAwareCommand's `--server` lookup: the fast start declines it
    cmd = COMMANDS[command]
    ctx = cmd.context_class(cmd, info_name=command)
    try:
        with ctx.scope(cleanup=False):
            click.Command.parse_args(cmd, ctx, list(args))
    except (click.ClickException, click.exceptions.Exit):
        return None
    given = {n for n in ctx.params if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE}
    return dict(ctx.params), given


def _corpus(tmp: Path, command: str = "mem") -> list[list[str]]:
    model = tmp / "m.gguf"
    model.write_bytes(b"GGUF")
    log = tmp / "llama.log"
    log.write_text("log")
    folder = tmp / "dir"
    folder.mkdir()
    files = [str(model), str(tmp / "missing.gguf"), str(folder), "-", "", "https://x/y.gguf", "hf://o/r/f.gguf"]
    ints = ["0", "1", "-1", "32768", " 7", "+3", "1_000", "abc", "", "1.5", "0x10", "-0"]
    floats = ["0", "2.5", "-1", "nan", "inf", "1e3", "x", ""]
    lines: list[list[str]] = [[], [str(model)], ["--help"], ["-h"], ["--"], [str(model), "--", "-c"]]
    options = SPECS[command]["options"]
    for opt, entry in options.items():
        kind = entry[1]
        if kind == "flag":
            values: list[list[str]] = [[opt], [opt, opt], [f"{opt}=1"]]
        elif kind == "optional":
            values = [[opt], [opt, "on"], [opt, "off", "-c", "5"], [opt, "-c", "5"], [opt, "ON"], [opt, "x"]]
            values += [[opt, w] for w in entry[2]] + [[opt, "-1"], [opt, "2"]]
            values += [[f"{opt}=on"]]
        elif kind == "spelled":
            values = [[opt, w] for w in entry[2]] + [[opt, w.upper()] for w in entry[2]] + [[opt, v] for v in ints]
        elif kind == "int":
            values = [[opt, v] for v in ints] + [[f"{opt}=5"], [f"{opt}="], [opt]]
        elif kind == "float":
            values = [[opt, v] for v in floats] + [[opt]]
        elif kind == "choice":
            values = [[opt, c] for c in entry[2]] + [[opt, entry[2][0].upper()], [opt, "nope"], [opt]]
        elif kind == "path":
            values = [[opt, f] for f in [str(log), *files]] + [[f"{opt}={log}"], [opt]]
        else:  # str, multi, decline
            values = [[opt, "24GiB"], [opt, "a=b"], [opt, "-c"], [opt, ""], [f"{opt}=x"], [opt], [opt, "1", opt, "2"]]
        for v in values:
            lines += [[str(model), *v], [*v, str(model)], v]
    lines += [[f] for f in files] + [[str(model), str(model)], ["-c5", str(model)], ["-c=5", str(model)]]
    lines += [["--ct", "5", str(model)], ["--CTX", "5"], ["-ctk=q8_0", str(model)], ["-np3"], ["---c", "4"]]
    rng = random.Random(21)
    flat = [v for v in lines if v]
    for _ in range(600):  # combinations: repeated options, several values, positions
        line: list[str] = []
        for _ in range(rng.randint(1, 6)):
            line += rng.choice(flat)
        lines.append(line)
    return lines


@pytest.mark.parametrize("command", FAST)
def test_the_fast_start_reads_a_command_line_as_click_does(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(COMMANDS) == set(FAST)
    monkeypatch.chdir(tmp_path)
    read = 0
    for args in _corpus(tmp_path, command):
        fast, ref = parse(command, args), _click(args, command)
        if fast is None:
            continue
        read += 1
        assert ref is not None, f"click refuses {args}, the fast start read it"
        # values with their types (repr: a nan equals a nan, 1 is not True)
        assert {k: (type(v), repr(v)) for k, v in fast[0].items()} == {
            k: (type(v), repr(v)) for k, v in ref[0].items()
        }, args
        assert fast[1] == ref[1], args
    # the lines click takes and the fast start reads too (info: most of its corpus names a remote option, declined)
    assert read > {"mem": 1000, "info": 30}[command], read


def test_the_usual_command_lines_are_read(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    for line in (
        "-c 32768 --gpus 24GiB",
        "-c 131072 -ctk q8_0 -ctv q8_0 --gpus 24GiB",
        "--gpus 24GiB,24GiB -ts 3,1 -ngl 40 --n-cpu-moe 20 -c 65536",
        "--fit 24GiB,24GiB --fit-layers -c 262144",
        "-c 8192 -np 4 --embedding --pooling last",
        "--fit 24GiB -fitt 1024 -ctk q8_0 -ctv q8_0 --json",
        "-c 4096 -fa on -ot blk\\.[0-9]+\\.ffn_.*_exps=CPU -nkvo --tablefmt github",
    ):
        args = [str(model), *line.split()]
        assert parse("mem", args) is not None, line
        assert parse("mem", args) == _click(args), line  # (no nan here: plain equality)


def _ggufx(
    args: list[str],
    fast: bool,
    watch: bool = False,
    extra_env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    prelude: str = "",
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "GGUFX_NO_FAST_START"}
    if not fast:
        env["GGUFX_NO_FAST_START"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["HF_HUB_OFFLINE"] = "1"  # an hf:// model is looked up in the header cache only: no network in tests
    env.update(extra_env or {})
    code = (WATCH if watch else "") + prelude + LAUNCH
    return subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, env=env, cwd=ROOT, timeout=300
    )


def test_both_starts_answer_the_same(gemma_path: Path, smollm2_path: Path, tmp_path: Path) -> None:
    g, s = str(gemma_path), str(smollm2_path)
    cases = [
        ["mem", g, "-c", "32768"],
        ["mem", s, "-c", "8192", "--gpus", "24GiB", "--json"],
        ["mem", g, "-c", "32768", "--gpus", "100MiB"],  # does not fit: exit 1
        ["mem", g, "--fit", "1GiB"],
        ["mem", s, "--fit", "2GiB", "--json", "-ctk", "q8_0", "-ctv", "q8_0"],
        ["mem", g, "-c", "4096", "-ngl", "3", "--gpus", "8GiB,8GiB", "-ts", "3,1", "--tablefmt", "github"],
        ["mem", g, "-c", "4096", "-fa", "off", "-ctv", "q4_0"],  # a quantized V cache without flash attention
        ["mem", g, "--gpus", "24XB"],  # an input error: the click group reports it
        ["mem", str(tmp_path / "missing.gguf")],  # a bad file: the same
        ["mem", g, "-c", "abc"],  # a value click refuses: click's message
        ["mem", g, "--gpus", "24GiB", "-ctk", "q8_0", "-c", "-5"],
        ["mem", "--llama-args", f"llama-server -m {s} -c 8192 -np 2 -fa on", "--gpus", "8GiB"],
        ["mem", g, "--llama-args", "-ngl 99 -c 32768 -ctk q8_0 -ctv q8_0"],
        ["mem", g, "-c", "8192", "--llama-args", "-ngl 99"],  # -c beside it: click refuses, naming it
        ["mem", "--llama-args", "llama-server -m hf://o/r/m.gguf -c 8192"],  # a URL inside: click's path
        ["mem", g, "--llama-args", "-c 4096 --bogus"],  # llama.cpp would refuse it: an input error
    ]
    for args in cases:
        a, b = _ggufx(args, fast=True), _ggufx(args, fast=False)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
    statuses = {tuple(args): _ggufx(args, fast=True).returncode for args in cases[:4]}
    assert list(statuses.values()) == [0, 0, 1, 0]


def test_both_starts_summarise_the_same(gemma_path: Path, smollm2_path: Path, tmp_path: Path) -> None:
    g, s = str(gemma_path), str(smollm2_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    cases = [
        ["info", g],
        ["info", s, "--json"],
        ["info", g, s, "--tablefmt", "github"],
        ["info", "--json", g, s, g],  # the same model twice: once
        ["info", g, str(bad), s],  # one of several unreadable: a line on stderr, the others summarised, exit 2
        ["info", str(bad), "--json"],  # the only one: the click group's error
        ["info", str(tmp_path / "missing.gguf")],
        ["info"],
    ]
    for args in cases:
        a, b = _ggufx(args, fast=True), _ggufx(args, fast=False)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
    assert [_ggufx(args, fast=True).returncode for args in cases[:5]] == [0, 0, 0, 0, 2]
    fast = _ggufx(["info", g, s], fast=True, watch=True)
    assert fast.returncode == 0 and fast.stderr.endswith(b"click: False\n"), fast.stderr


def test_a_full_disk_is_the_same_one_line(gemma_path: Path) -> None:
    """stdout on a full disk: one line naming the system's refusal, exit 2, whichever start wrote it."""
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    outs = []
    for fast in (True, False):
        env = {k: v for k, v in os.environ.items() if k != "GGUFX_NO_FAST_START"} | {"PYTHONIOENCODING": "utf-8"}
        if not fast:
            env["GGUFX_NO_FAST_START"] = "1"
        for args in (["mem", str(gemma_path), "-c", "4096"], ["info", str(gemma_path)]):
            with open("/dev/full", "w") as full:
                p = subprocess.run(
                    [sys.executable, "-c", LAUNCH, *args], stdout=full, stderr=subprocess.PIPE, env=env, timeout=300
                )
            outs.append((p.returncode, p.stderr))
    assert outs[:2] == outs[2:] and outs[0] == (2, b"ggufx: error: No space left on device\n"), outs


def test_both_starts_answer_the_same_where_click_reads_more_than_the_options(gemma_path: Path) -> None:
    g = str(gemma_path)
    log = ROOT / "tests" / "fixtures" / "llamacpp-logs" / "gemma-ngl99-c32768.log"
    cases: list[tuple[list[str], dict[str, str], bytes | None]] = [
        # ServerAwareCommand takes --server out of the command line before click parses it, even as another
        # option's value (a valid -ot here); the URL is refused at once (port 9, this machine: no network)
        (["mem", g, "-ot", "--server=http://127.0.0.1:9/=CPU"], {}, None),
        # click's shell completion answers whatever the command line (the variable named after the program)
        (["mem", g, "-c", "4096"], {"_GGUFX_COMPLETE": "bash_source"}, None),
        (
            ["mem", g, "-c", "4096"],
            {"_GGUFX_COMPLETE": "zsh_complete", "COMP_WORDS": "ggufx mem", "COMP_CWORD": "2"},
            None,
        ),
        # a pipe (`--check <(llama-cli ...)`) reads once: a failing fast start must not have drained it for the group
        (["mem", g, "-c", "32768", "-md", g, "--check", "/dev/stdin"], {}, log.read_bytes()),
        (["mem", g, "-c", "32768", "--check", "/dev/stdin"], {}, log.read_bytes()),
    ]
    for args, env, stdin in cases:
        a = _ggufx(args, fast=True, extra_env=env, stdin=stdin)
        b = _ggufx(args, fast=False, extra_env=env, stdin=stdin)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), (args, env)


def test_both_starts_end_an_interrupt_the_same(gemma_path: Path) -> None:
    args = ["mem", str(gemma_path), "-c", "4096"]
    a, b = _ggufx(args, fast=True, prelude=INTERRUPT), _ggufx(args, fast=False, prelude=INTERRUPT)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr) == (1, b"", b"\nAborted!\n")


def test_the_fast_start_imports_no_click(gemma_path: Path) -> None:
    fast = _ggufx(["mem", str(gemma_path), "-c", "32768", "--gpus", "24GiB"], fast=True, watch=True)
    assert fast.returncode == 0 and fast.stderr.endswith(b"click: False\n"), fast.stderr
    slow = _ggufx(["mem", str(gemma_path), "-c", "32768", "--gpus", "24GiB"], fast=False, watch=True)
    assert slow.stderr.endswith(b"click: True\n") and slow.stdout == fast.stdout
    # what it declines goes to click: --help, and a bad file reported by the click group
    read = _ggufx(["mem", "--llama-args", f"-m {gemma_path} -c 8192 -ngl 99"], fast=True, watch=True)
    assert read.returncode == 0 and read.stderr.endswith(b"click: False\n"), read.stderr
    # click's shell completion (the environment asks for it, whatever the arguments): click's
    completing = {**os.environ, "_GGUFX_COMPLETE": "bash_complete", "COMP_WORDS": "ggufx mem --ct", "COMP_CWORD": "2"}
    done = subprocess.run(
        [sys.executable, "-c", WATCH + LAUNCH, "mem", str(gemma_path)], capture_output=True, env=completing, cwd=ROOT
    )
    assert done.returncode == 0 and b"--ctx" in done.stdout and done.stderr.endswith(b"click: True\n"), done
    for args in (
        ["mem", "--help"],
        ["mem", str(gemma_path) + ".missing"],
        ["mem", "--llama-args", "-m hf://o/r/f.gguf"],
    ):
        assert _ggufx(args, fast=True, watch=True).stderr.endswith(b"click: True\n"), args
