"""Every ``ggufx`` command the README shows runs, exits as the README says, and prints what it pastes.

The convention the README follows (and this test reads):

* in a ```sh block, every line that starts with ``ggufx `` is a command, an example on its own (an
  edit runs on a fresh copy of the file; the read-only commands of a block share one folder, so
  that ``verify manifest.json`` finds the manifest written above it);
* in a ```console block, every line that starts with ``$ ggufx `` is a command and the lines after
  it, up to the next ``$ `` line, are its output. The commands of one console block run in order in
  one folder (a session: a later command sees what an earlier one wrote);
* a command exits 0 unless its trailing comment says ``(exit N)``;
* in pasted output, ``…`` is a trim: a line that is only ``…`` stands for any number of lines, and
  ``…`` inside a line for any text. Every other pasted line is the command's line exactly, in order.
  The one-line summary of an edit (``insert-range: wrote ...``) depends on the filesystem (an
  in-place, insert-range or rewrite write), so there the test asks for a summary line of any
  strategy;
* the first ```toml block is the policy ``policy.toml`` that the commands use.

Placeholder file names are mapped onto files of the test suite (``PLACEHOLDERS``): ``model.gguf`` is
SmolLM2, the Qwen files are the header-only models of the recorded llama.cpp runs, the companion
files are written for SmolLM2 with gguf-py. Each block runs in a folder of its own (links to those
files; a copy of each GGUF that a command edits), as the cwd, and ``~/models`` is that folder.
Commands that need the network, a running llama-server or an MCP client are listed in ``SKIPPED``
with the reason; the test fails if the README gains or loses a command without this file saying so.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.graph_arch_logs import cpu_model
from tests.support import FIXTURES, CliRun

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# command (as the README writes it, without its comment) -> why it does not run here
SKIPPED = {
    "ggufx info hf://ORG/REPO/model-Q4_K_M.gguf": "network: a placeholder Hugging Face repository",
    "ggufx info --server http://127.0.0.1:8080": "needs a running llama-server",
    "ggufx mcp --root ~/models": "serves MCP over stdio until its client leaves (tests/test_mcp.py drives it)",
    "ggufx template render --server http://127.0.0.1:8080 --engine llama.cpp --sample tools": (
        "needs a running llama-server"
    ),
    "ggufx info hf://unsloth/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf": "network: the Hugging Face Hub",
    "ggufx mem  hf://ORG/REPO@v1.2/model-Q4_K_M.gguf --ctx 32768 --cache-type-k q8_0": (
        "network: a placeholder Hugging Face repository"
    ),
    "ggufx template lint https://example.org/models/model.gguf": "network: a placeholder URL",
    "ggufx --debug info hf://ORG/REPO/model.gguf": "network: a placeholder Hugging Face repository",
    "ggufx scan hf://unsloth/Qwen3-8B-GGUF": "network: the Hugging Face Hub's API",
    "ggufx template lint --server http://127.0.0.1:8080": "needs a running llama-server",
    "ggufx pick hf://ORG/REPO --gpus 24GiB -c 32768": "network: a placeholder Hugging Face repository",
    "ggufx pick hf://unsloth/Qwen3-30B-A3B-GGUF --gpus 24GiB,24GiB -c 65536": "network: the Hugging Face Hub",
    "ggufx pick hf://ORG/REPO@v1.2 --gpus 16GiB -c 32768 -ctk q8_0 -ctv q8_0 --tablefmt github": (
        "network: a placeholder Hugging Face repository"
    ),
}
# how many commands the README shows that this test runs; a README edit that changes it (or breaks
# the extraction) must change this number too
EXPECTED_RUN = 70

# placeholder name in the README -> (path inside the block's folder, what it is); the folder is built
# by ``files`` below
PLACEHOLDERS = {
    "model.gguf": "SmolLM2 135M Instruct Q4_1 (a real test model)",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "the same file under its own name",
    "gemma-3-270m-q4_k_m.gguf": "Gemma 3 270M Q4_K_M (a real test model)",
    "draft.gguf": "SmolLM2 again: a draft model llama.cpp accepts for itself",
    "big/Qwen3.6-27B-Q4_K_M.gguf": "the header-only qwen36-27b of the recorded llama.cpp runs",
    "big/Qwen3-30B-A3B-Q4_K_M.gguf": "the header-only qwen3moe-30b-a3b of the recorded llama.cpp runs",
    "embed/Qwen3-Embedding-0.6B-Q8_0.gguf": "the header-only qwen3-embedding-0.6b of the recorded CPU embedding runs",
    "mmproj.gguf": "the header-only SmolVLM 256M projector (projects to 576, SmolLM2's width)",
    "adapter.gguf": "a LoRA adapter for two SmolLM2 tensors (gguf-py)",
    "imatrix.gguf": "an importance matrix for every SmolLM2 weight llama-quantize quantizes (gguf-py)",
    "control-vector.gguf": "a control vector of SmolLM2's width (gguf-py)",
    "quants/model-Q4_K_M.gguf": "a tiny llama model, F32",
    "quants/model-UD-Q4_K_XL.gguf": "the same with some tensors F16: types that differ by role and layer",
    "fixed.jinja": "Qwen 2.5's chat template (tests/fixtures/templates)",
    "tokenizer_config.json": "a tokenizer_config.json holding that template",
    "conv.json": "a conversation (--messages)",
    "tools.json": "a tool schema (--tools)",
    "llama.log": "llama.cpp's -v log of Gemma 3 270M, -ngl 99 -c 32768 (tests/fixtures/llamacpp-logs)",
    "policy.toml": "the README's policy (its first toml block)",
}
# names the README uses for files under big/, quants/ and embed/ (kept out of the folder's top level, so that
# `*.gguf` and `~/models` do not hash 37 GB of header-only models or scan tokenizer-less toys)
ALIASES = {Path(p).name: p for p in PLACEHOLDERS if "/" in p}

EDITS = {"set", "delete", "rename", "edit"}
NETWORK = re.compile(r"hf://|https?://|--server\b")
EXIT = re.compile(r"\(exit (\d)\)")
WRITE_SUMMARY = re.compile(r"^(in-place|insert-range|rewrite): (would write|wrote) ")


@dataclass
class Command:
    text: str  # the command without its comment
    line: int  # 1-based line in README.md
    expected_exit: int
    output: list[str] | None = None  # pasted output (console blocks)


@dataclass
class Block:
    lang: str
    line: int
    commands: list[Command] = field(default_factory=list)


def _blocks() -> tuple[list[Block], str]:
    blocks: list[Block] = []
    policy = ""
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = lines[start:j]
        if lang == "toml" and not policy:
            policy = "\n".join(body) + "\n"
        if lang in ("sh", "console"):
            block = Block(lang, start)
            for k, text in enumerate(body):
                prompt = "$ " if lang == "console" else ""
                if lang == "console" and text.startswith("$ ") and not text.startswith("$ ggufx "):
                    raise AssertionError(f"README.md:{start + k + 1}: a console command that is not ggufx")
                if text.startswith(prompt + "ggufx "):
                    code = text[len(prompt) :]
                    comment = code.split("  #", 1)[1] if "  #" in code else ""
                    found = EXIT.search(comment)
                    cmd = Command(code.split("  #", 1)[0].rstrip(), start + k + 1, int(found.group(1)) if found else 0)
                    if lang == "console":
                        cmd.output = []
                    block.commands.append(cmd)
                elif lang == "console" and block.commands:
                    block.commands[-1].output.append(text.rstrip())  # type: ignore[union-attr]
            if block.commands:
                blocks.append(block)
        i = j + 1
    return blocks, policy


BLOCKS, POLICY = _blocks()
RUN_BLOCKS = [b for b in BLOCKS if any(c.text not in SKIPPED for c in b.commands)]


def test_readme_commands_are_all_accounted_for() -> None:
    commands = [c for b in BLOCKS for c in b.commands]
    shown = {c.text for c in commands}
    assert not set(SKIPPED) - shown, f"SKIPPED lists commands the README no longer shows: {set(SKIPPED) - shown}"
    for c in commands:
        needs_network = bool(NETWORK.search(c.text)) or c.text.startswith("ggufx mcp --root")
        assert needs_network == (c.text in SKIPPED), f"README.md:{c.line}: {c.text!r} " + (
            "must be listed in SKIPPED" if needs_network else "runs here"
        )
    assert sum(c.text not in SKIPPED for c in commands) == EXPECTED_RUN
    assert POLICY, "the README's policy (its first toml block) is missing"
    # the headline features open the Commands block, in this order
    overview = next(b for b in BLOCKS if b.lang == "sh" and b.commands[0].text.startswith("ggufx roles"))
    firsts = [c.text.split()[1] if c.text.split()[1] != "template" else "template set" for c in overview.commands[:6]]
    assert firsts == ["roles", "layers", "mem", "report", "check", "template set"]


def test_readme_commands_use_the_option_names_help_shows() -> None:
    """A hidden option is an earlier spelling kept working (``template set --from``): the README, a
    user's guide, spells each option as ``--help`` lists it."""
    import click

    from ggufx.cli import main

    ctx = click.Context(main)
    for c in (c for b in BLOCKS for c in b.commands):
        words = shlex.split(c.text, comments=True)[1:]
        words = [w for w in words if not w.startswith("--debug")]
        cmd: click.Command | None = main.get_command(ctx, words[0])
        assert cmd is not None, c.text
        if isinstance(cmd, click.Group):
            cmd = cmd.get_command(ctx, words[1])
            assert cmd is not None, c.text
        hidden = {o for p in cmd.params if isinstance(p, click.Option) and p.hidden for o in p.opts}
        used = {w.split("=", 1)[0] for w in words if w.startswith("-")}
        assert not used & hidden, f"README.md:{c.line}: {c.text!r} uses {sorted(used & hidden)}, not what --help shows"


def test_set_up_section_is_unchanged() -> None:
    """CI (.ci/run) and the graders run these two lines as they are."""
    text = README.read_text(encoding="utf-8")
    assert (
        "```sh\npython3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
        ".venv/bin/ggufx info tests/fixtures/all-types-v3.gguf\n```" in text
    )
    assert "```sh\n.venv/bin/python -m pytest -q\n```" in text


@pytest.fixture(scope="module")
def files(real_models: dict[str, Path], hole_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every block's folder links to: one file per placeholder name."""
    import ggufx

    from . import companion_files as cf

    out = tmp_path_factory.mktemp("readme-files")
    (out / "big").mkdir()
    (out / "quants").mkdir()
    (out / "embed").mkdir()
    smol, gemma = real_models["smollm2"], real_models["gemma"]
    links = {
        "model.gguf": smol,
        "SmolLM2-135M-Instruct.Q4_1.gguf": smol,
        "draft.gguf": smol,
        "gemma-3-270m-q4_k_m.gguf": gemma,
        "big/Qwen3.6-27B-Q4_K_M.gguf": hole_models["qwen36-27b"],
        "big/Qwen3-30B-A3B-Q4_K_M.gguf": hole_models["qwen3moe-30b-a3b"],
        "embed/Qwen3-Embedding-0.6B-Q8_0.gguf": cpu_model("qwen3-embedding-0.6b", tmp_path_factory.mktemp("emb"), smol),
        "mmproj.gguf": hole_models["mmproj-smolvlm-256m"],
        "llama.log": FIXTURES / "llamacpp-logs" / "gemma-ngl99-c32768.log",
    }
    for name, target in links.items():
        (out / name).symlink_to(target)
    cf.write_lora(out / "adapter.gguf", {"blk.0.attn_q.weight": (576, 576), "blk.0.ffn_up.weight": (576, 1536)})
    weights = [t for t in ggufx.open(smol).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    cf.write_imatrix(
        out / "imatrix.gguf",
        {t.name: ([1.0 + (i * 37 % 101) / 10.0] * t.shape[0], 64.0) for i, t in enumerate(weights)},
    )
    cf.write_control_vector(out / "control-vector.gguf", n_embd=576, layers=29)
    cf.write_base(out / "quants/model-Q4_K_M.gguf", n_layer=4)
    cf.write_base(
        out / "quants/model-UD-Q4_K_XL.gguf",
        n_layer=4,
        f16=frozenset({"blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.3.attn_v.weight"}),
    )
    template = (FIXTURES / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    (out / "fixed.jinja").write_text(template, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    (out / "conv.json").write_text(json.dumps([{"role": "user", "content": "What is the weather in Paris?"}]))
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    (out / "tools.json").write_text(json.dumps([weather]))
    (out / "policy.toml").write_text(POLICY, encoding="utf-8")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()) == sorted(PLACEHOLDERS)
    return out


def _is_edit(args: list[str]) -> bool:
    return bool(args) and (args[0] in EDITS or args[:2] == ["template", "set"])


def _args(text: str, folder: Path) -> tuple[list[str], str | None]:
    """The command's arguments after ``ggufx`` (globs expanded in ``folder``, ``~/models`` is
    ``folder``, README names of files kept in subfolders resolved) and the file of a ``> FILE``."""
    words = shlex.split(text, comments=True)[1:]
    redirect = None
    if ">" in words:
        k = words.index(">")
        redirect, words = words[k + 1], words[:k]
    args: list[str] = []
    for w in words:
        w = w.replace("~/models", str(folder))
        w = ALIASES.get(w, w)
        if "*" in w:
            found = sorted(glob.glob(w if os.path.isabs(w) else str(folder / w)))
            assert found, f"{w}: matches no file"
            args += [os.path.relpath(f, folder) if not os.path.isabs(w) else f for f in found]
        else:
            args.append(w)
    return args, redirect


def _folder(commands: list[Command], files: Path, folder: Path) -> Path:
    """``folder``, with links to every file of ``files`` and a copy of each GGUF that one of
    ``commands`` edits."""
    edited = set()
    for c in commands:
        args, _ = _args(c.text, files)
        if _is_edit(args):
            edited |= {a for a in args if a in PLACEHOLDERS and a.endswith(".gguf")}
    for sub in ("big", "quants", "embed"):
        (folder / sub).mkdir(parents=True)
    for name in PLACEHOLDERS:
        src = files / name
        if name in edited:
            shutil.copyfile(src.resolve(), folder / name)
        else:
            (folder / name).symlink_to(src.resolve())
    return folder


def _line_matches(expected: str, actual: str) -> bool:
    if WRITE_SUMMARY.match(expected):
        return bool(WRITE_SUMMARY.match(actual))
    if "…" not in expected:
        return expected == actual
    first, *middle, last = expected.split("…")
    if not (actual.startswith(first) and actual.endswith(last) and len(actual) >= len(first) + len(last)):
        return False
    pos, end = len(first), len(actual) - len(last)
    for piece in middle:
        found = actual.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _output_matches(expected: list[str], actual: list[str]) -> bool:
    """Consecutive lines, where a line of only ``…`` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "…":
        return any(_output_matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and _line_matches(expected[0], actual[0]) and _output_matches(expected[1:], actual[1:])


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"{b.lang}-line{b.line}" for b in RUN_BLOCKS])
def test_readme_block(block: Block, cli: CliRun, files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = [c for c in block.commands if c.text not in SKIPPED]
    # a console block is one session; in an sh block each edit is an example of its own, on a fresh copy
    folder = _folder([c for c in run if block.lang == "console"], files, tmp_path / "block")
    empty = tmp_path / "empty"
    empty.mkdir()
    # `scan --hf-cache --ollama` reads these stores: empty ones, never this machine's own
    env = {"HF_HUB_CACHE": str(empty), "HF_HOME": str(empty), "OLLAMA_MODELS": str(empty)}
    for n, c in enumerate(run):
        here = folder
        if block.lang == "sh" and _is_edit(_args(c.text, files)[0]):
            here = _folder([c], files, tmp_path / f"edit{n}")
        monkeypatch.chdir(here)
        args, redirect = _args(c.text, here)
        r = cli(*args, env=env)
        where = f"README.md:{c.line}: {c.text}"
        assert r.exit_code == c.expected_exit, f"{where}: exit {r.exit_code}, not {c.expected_exit}\n{r.output}"
        if c.expected_exit == 2:
            assert r.stderr.startswith("ggufx: error: ") and r.stderr.count("\n") == 1, f"{where}: {r.stderr}"
        if redirect:
            (here / redirect).write_bytes(r.stdout_bytes)
        if c.output is not None:
            actual = [line.rstrip() for line in r.output.splitlines()]
            assert _output_matches(c.output, actual), (
                f"{where}: the README's output is not what the command prints\n--- README\n"
                + "\n".join(c.output)
                + "\n--- printed\n"
                + "\n".join(actual)
            )


def test_readme_python_block_runs(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API example runs as the README shows it (``model.gguf`` is SmolLM2): it called
    ``results.memory(model, ctx=...)``, which the library has not taken since MemoryRequest."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks, "the README's Python example is missing"
    monkeypatch.chdir(files)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def test_output_matching_is_strict() -> None:
    """The matcher used above fails on a changed, missing or extra line."""
    printed = ["a  1", "b  2", "c  3"]
    assert _output_matches(["a  1", "b  2", "c  3"], printed)
    assert _output_matches(["a  1", "…"], printed)
    assert _output_matches(["…", "c  3"], printed)
    assert _output_matches(["a…", "…", "…3"], printed)
    assert not _output_matches(["a  1", "b  2"], printed)  # a line left out without a trim
    assert not _output_matches(["a  1", "c  3"], printed)
    assert not _output_matches(["a  1", "b  9", "…"], printed)
    assert not _output_matches(["a…x", "…"], printed)
    assert _line_matches("insert-range: wrote 9 bytes", "rewrite: wrote 12 bytes to x")
    assert not _line_matches("insert-range: wrote 9 bytes", "something else")
