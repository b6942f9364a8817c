"""Every ``--json`` output of every command on the test fixtures and the two real models, recorded
byte for byte under ``tests/fixtures/json-snapshots/`` (one file per case: the exit code on the
first line, then stdout), so that a refactor of the results, render and CLI layers cannot change
the JSON interface unnoticed (``tests/test_json_snapshots.py`` compares).

Absolute paths are normalised (``$FIXTURES``, ``$MODELS``, ``$WORK``, ``$HOLES``) and the one timing
key (``seconds`` of the edit commands) is zeroed; nothing else is touched. An output over 256 KiB
(``meta --full`` of a real model: its whole vocabulary) is recorded as its sha256 and length.

Regenerate (only when a change of the JSON interface is intended, and say so in the commit)::

    .venv/bin/python -m tests.support.json_snapshots            # rewrite every snapshot
    .venv/bin/python -m tests.support.json_snapshots info-      # only the cases starting so
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SNAPSHOTS = FIXTURES / "json-snapshots"
LOGS = FIXTURES / "llamacpp-logs"

LOCAL = [
    "all-types-v2",
    "all-types-v3",
    "big-endian",
    "edge-values",
    "no-tensors",
    "raw-base",
    "split-00001-of-00003",
    "unknown-type",
]
REAL = ["smollm2", "gemma"]


@dataclass(frozen=True)
class Case:
    """``ggufx ARGV`` (``{F}`` the fixtures, ``{smollm2}``/``{gemma}`` the real models, ``{W}`` the work
    folder, ``{H}`` the recorded runs' header-only models); or, with ``tool``, the MCP tool of that
    name called with ``argv`` as KEY=JSON pairs."""

    name: str
    argv: tuple[str, ...]
    real: bool = False
    tool: str | None = None


def _f(stem: str) -> str:
    return "{F}/" + stem + ".gguf"


def cases() -> list[Case]:
    out: list[Case] = []

    def add(name: str, *argv: str, tool: str | None = None) -> None:
        real = any(k in a for a in argv for k in ("{smollm2}", "{gemma}", "{H}"))
        out.append(Case(name, argv, real, tool))

    files = [(s, _f(s)) for s in LOCAL] + [(r, "{" + r + "}") for r in REAL]
    for stem, path in files:
        add(f"info-{stem}", "info", path, "--json")
        add(f"tensors-{stem}", "tensors", path, "--json")
        add(f"meta-{stem}", "meta", path, "--json")
        add(f"meta-full-{stem}", "meta", path, "--full", "--json")
        add(f"roles-{stem}", "roles", path, "--json")
        add(f"layers-{stem}", "layers", path, "--json")
        add(f"layers-nocollapse-{stem}", "layers", path, "--no-collapse", "--json")
        add(f"recipe-{stem}", "recipe", path, "--json")
        add(f"mem-{stem}", "mem", path, "--json")
        add(f"report-{stem}", "report", path, "--json")
        add(f"hash-{stem}", "hash", path, "--per-tensor", "--json")
        add(f"template-show-{stem}", "template", "show", path, "--json")
        add(f"template-info-{stem}", "template", "info", path, "--json")
        add(f"template-lint-{stem}", "template", "lint", path, "--json")
        add(f"template-render-{stem}", "template", "render", path, "--json")
        add(f"set-dry-{stem}", "set", path, "general.name", "Snapshot", "--dry-run", "--json")
    add("info-many", "info", _f("all-types-v3"), _f("split-00001-of-00003"), _f("split-00002-of-00003"), "--json")
    add("info-split-shard2", "info", _f("split-00002-of-00003"), "--json")
    add("meta-key", "meta", _f("all-types-v3"), "general.architecture", "--json")
    add("meta-key-array", "meta", "{smollm2}", "tokenizer.ggml.tokens", "--json")
    add("tensors-filter", "tensors", "{gemma}", "--type", "Q6_K", "--grep", "ffn", "--sort", "size", "--json")
    add("tensors-page", "tensors", "{smollm2}", "--layers", "3-5", "--limit", "7", "--offset", "2", "--json")
    add("tensors-sort-bpw", "tensors", "{smollm2}", "--sort", "bpw", "--limit", "5", "--json")
    add("diff-real", "diff", "{smollm2}", "{gemma}", "--json")
    add("diff-local", "diff", _f("all-types-v2"), _f("all-types-v3"), "--json")
    add("diff-same", "diff", _f("raw-base"), _f("raw-base"), "--json")
    # memory: the options a user gives, llama.cpp's own command line, several GPUs, the fit and the check
    add("mem-ctx-q8", "mem", "{gemma}", "-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0", "--json")
    add("mem-faoff", "mem", "{smollm2}", "-c", "8192", "--no-flash-attn", "--json")
    add("mem-fa-on", "mem", "{smollm2}", "-c", "8192", "-fa", "on", "--json")
    add("mem-server", "mem", "{smollm2}", "-c", "16384", "-np", "4", "--tool", "llama-server", "--json")
    add("mem-gpus", "mem", "{gemma}", "--gpus", "24GiB,8GiB", "-ngl", "10", "-ts", "3,1", "--json")
    add("mem-gpus-none", "mem", "{gemma}", "--gpus", "none", "-c", "4096", "--json")
    add("mem-ot", "mem", "{smollm2}", "--gpus", "8GiB", "-ot", "blk\\.[0-9]\\.=CPU", "-nkvo", "--no-mmap", "--json")
    add("mem-swa-unified", "mem", "{gemma}", "-c", "16384", "--swa-full", "-kvu", "-np", "2", "-ub", "256", "--json")
    add("mem-llama-args", "mem", "{gemma}", "--llama-args", "-ngl 12 -c 8192 -fa off -ctk q8_0", "--json")
    add("mem-draft", "mem", "{gemma}", "-c", "8192", "-md", "{gemma}", "-ngld", "5", "--json")
    add("mem-fit", "mem", "{gemma}", "--fit", "1GiB", "--json")
    add("mem-fit-2gpu", "mem", "{smollm2}", "--fit", "512MiB,512MiB", "-fitt", "64", "--json")
    add("mem-fit-layers", "mem", "{gemma}", "--fit", "400MiB", "--fit-layers", "-c", "32768", "--json")
    add("mem-fit-ctx", "mem", "{smollm2}", "--fit", "2GB", "-c", "4096", "-ctk", "q4_0", "-ctv", "q4_0", "--json")
    add(
        "mem-check",
        "mem",
        "{smollm2}",
        "--llama-args",
        "-ngl 99 -c 8192",
        "--check",
        str(LOGS / "2g-smol-ngl99-c8192.log"),
        "--json",
    )
    add(
        "mem-check-cpu",
        "mem",
        "{gemma}",
        "--llama-args",
        "-ngl 0 -c 32768",
        "--check",
        str(LOGS / "cpu-gemma-c32768.log"),
        "--json",
    )
    add("mem-mmproj", "mem", "{W}/base.gguf", "-c", "256", "--mmproj", "{W}/mmproj.gguf", "--json")
    add("mem-fit-mmproj", "mem", "{W}/base.gguf", "--fit", "64MiB", "--mmproj", "{W}/mmproj.gguf", "--json")
    # companion files
    add("imatrix", "imatrix", "{W}/imatrix.gguf", "--json")
    add("imatrix-model", "imatrix", "{W}/imatrix.gguf", "--model", "{W}/base.gguf", "--json")
    add("recipe-budget", "recipe", "{W}/base16.gguf", "--imatrix", "{W}/imatrix.gguf", "--budget", "28", "--json")
    add("recipe-base", "recipe", "{W}/base.gguf", "--json")
    add("info-companions", "info", "{W}/mmproj.gguf", "{W}/lora.gguf", "{W}/imatrix.gguf", "{W}/cvec.gguf", "--json")
    add("report-mmproj", "report", "{W}/mmproj.gguf", "--json")
    add("report-imatrix", "report", "{W}/imatrix.gguf", "--json")
    add("roles-lora", "roles", "{W}/lora.gguf", "--json")
    add("layers-cvec", "layers", "{W}/cvec.gguf", "--json")
    add(
        "check-companions", "check", "{W}/base.gguf", "--mmproj", "{W}/mmproj.gguf", "--lora", "{W}/lora.gguf", "--json"
    )
    add("check-policy", "check", "{smollm2}", "{gemma}", "--policy", "{W}/policy.toml", "--json")
    add("scan", "scan", "{W}", "--json")
    add("scan-nolint", "scan", "{W}", "--no-lint", "--json")
    # integrity
    add("hash-sha256", "hash", "{smollm2}", "--algo", "sha256", "--json")
    add("hash-split", "hash", _f("split-00003-of-00003"), "--json")
    add("manifest", "manifest", _f("raw-base"), _f("all-types-v3"), "-o", "{W}/manifest.json", "--json")
    add("verify", "verify", "{W}/verify.json", "--json")
    add("verify-other", "verify", "{W}/verify.json", _f("raw-base"), _f("edge-values"), "--json")
    # edits (dry runs: the fixtures stay as they are)
    add("set-array", "set", _f("raw-base"), "my.list", "[1, 2, 3]", "--type", "u32", "--dry-run", "--json")
    add(
        "set-file",
        "set",
        _f("raw-base"),
        "tokenizer.chat_template",
        "--from-file",
        "{W}/t.jinja",
        "--dry-run",
        "--json",
    )
    add("delete", "delete", _f("all-types-v3"), "general.architecture", "--dry-run", "--force", "--json")
    add("rename", "rename", _f("all-types-v3"), "general.name", "general.basename", "--dry-run", "--json")
    add(
        "edit",
        "edit",
        "{smollm2}",
        "--set",
        "my.count:u32=7",
        "--set-file",
        "tokenizer.chat_template={W}/t.jinja",
        "--delete",
        "general.license",
        "--rename",
        "general.name=general.title",
        "--dry-run",
        "--reserve",
        "64K",
        "--json",
    )
    # chat templates
    add("template-set-dry", "template", "set", "{smollm2}", "--from", "{W}/t.jinja", "--dry-run", "--json")
    add("template-diff", "template", "diff", "{smollm2}", "{smollm2}", "--json")
    add("template-diff-file", "template", "diff", "{smollm2}", "{W}/t.jinja", "--json")
    add("template-info-file", "template", "info", "{W}/t.jinja", "--json")
    add("template-lint-var", "template", "lint", "{smollm2}", "--var", "enable_thinking=false", "--json")
    add("template-render-tools", "template", "render", "{smollm2}", "--sample", "tools", "--json")
    add("template-render-llamacpp", "template", "render", "{smollm2}", "--engine", "llama.cpp", "--json")
    add(
        "template-render-nogen",
        "template",
        "render",
        "{smollm2}",
        "--sample",
        "plain",
        "--no-generation-prompt",
        "--json",
    )
    add("template-render-messages", "template", "render", "{W}/t.jinja", "--messages", "{W}/conv.json", "--json")
    add("mcp-list-tools", "mcp", "--list-tools", "--json")
    # the recorded runs' models: a projector, a draft model, MoE offload, several GPUs
    q27, mm27 = "{H}/qwen36-27b.gguf", "{H}/mmproj-qwen36-27b.gguf"
    add("mem-q27-mmproj", "mem", q27, "-c", "32768", "--gpus", "80GiB,80GiB", "--mmproj", mm27, "--json")
    add(
        "mem-q27-mmproj-tokens",
        "mem",
        q27,
        "--mmproj",
        mm27,
        "--image-min-tokens",
        "1024",
        "--image-max-tokens",
        "2048",
        "--json",
    )
    add("mem-q27-mmproj-cpu", "mem", q27, "--mmproj", mm27, "--no-mmproj-offload", "-ngl", "20", "--json")
    add(
        "mem-q27-mmproj-check",
        "mem",
        q27,
        "--llama-args",
        "-ngl 99 -c 32768",
        "--mmproj",
        mm27,
        "--check",
        str(LOGS / "2g-q27-mmproj-c32768.log"),
        "--json",
    )
    add(
        "mem-draft-check",
        "mem",
        "{H}/llama31-8b.gguf",
        "--tool",
        "llama-server",
        "--llama-args",
        "-md {H}/llama32-1b.gguf -ngl 99 -ngld 99 -c 32768 -np 1",
        "--check",
        str(LOGS / "2g-srv-l8b-draft-l1b.log"),
        "--json",
    )
    add(
        "mem-draft-options",
        "mem",
        "{H}/llama31-8b.gguf",
        "-md",
        "{H}/llama32-1b.gguf",
        "-ngld",
        "10",
        "-ctkd",
        "q8_0",
        "-ctvd",
        "q8_0",
        "-c",
        "32768",
        "--json",
    )
    moe = "{H}/qwen3moe-30b-a3b.gguf"
    add("mem-moe-ncmoe", "mem", moe, "--gpus", "80GiB,80GiB", "--n-cpu-moe", "16", "-c", "32768", "--json")
    add("mem-moe-cmoe", "mem", moe, "--gpus", "24GiB", "--cpu-moe", "-c", "65536", "--json")
    add("mem-moe-sm", "mem", moe, "--gpus", "24GiB,24GiB", "-sm", "none", "-mg", "1", "--json")
    add("mem-fit-q27-mmproj", "mem", q27, "--fit", "24GiB", "--mmproj", mm27, "--json")
    add("mem-fit-moe", "mem", moe, "--fit", "24GiB,24GiB", "-fitc", "8192", "--json")
    add("mem-fit-moe-layers", "mem", moe, "--fit", "24GiB", "--fit-layers", "-c", "65536", "--json")
    add("report-q27", "report", q27, "--json")
    add("info-mmproj-q27", "info", mm27, "--json")
    # the MCP tools that take other arguments than the CLI
    add("mcp-memory", "path={H}/qwen36-27b.gguf", "ctx=65536", "cache_type_k=q8_0", "cache_type_v=q8_0", tool="memory")
    add(
        "mcp-memory-mmproj",
        "path={H}/qwen36-27b.gguf",
        "mmproj={H}/mmproj-qwen36-27b.gguf",
        "n_gpu_layers=30",
        "parallel=2",
        "flash_attn=false",
        tool="memory",
    )
    add("mcp-memory-small", "path={smollm2}", tool="memory")
    add("mcp-fit", "path={gemma}", 'budget="1GiB"', tool="fit")
    add("mcp-fit-mmproj", "path={H}/qwen36-27b.gguf", 'budget="24GiB"', "mmproj={H}/mmproj-qwen36-27b.gguf", tool="fit")
    add("mcp-list-models", tool="list_models")
    add("mcp-list-models-lint", "lint=true", tool="list_models")
    add("mcp-type-histogram", "path={gemma}", tool="type_histogram")
    add("mcp-tensors", "path={smollm2}", 'types=["Q4_1"]', "limit=3", "offset=4", tool="tensors")
    add("mcp-metadata", "path={smollm2}", 'key="general.name"', tool="metadata")
    add("mcp-recipe", "path={W}/base16.gguf", "imatrix={W}/imatrix.gguf", "budget=28", tool="recipe")
    add("mcp-imatrix", "path={W}/imatrix.gguf", "model={W}/base.gguf", tool="imatrix")
    add("mcp-template-lint", "path={smollm2}", tool="template_lint")
    add("mcp-template-render", "path={smollm2}", 'sample="plain"', tool="template_render")
    add("mcp-hash", "path={F}/raw-base.gguf", "per_tensor=true", tool="hash_")
    add("mcp-verify", "manifest={W}/verify.json", "path={F}/raw-base.gguf", tool="verify")
    add("mcp-diff", "a={F}/all-types-v2.gguf", "b={F}/all-types-v3.gguf", tool="diff")
    return out


T_JINJA = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
POLICY = """\
[model]
bpw = { min = 4.0, max = 9.0 }
parameters = { max = 1_000_000_000 }

[tensors]
"token_embd" = { allowed = ["Q8_0", "Q6_K", "Q4_1"] }
"ffn_down" = { min = "Q4_0" }

[metadata]
required = ["tokenizer.chat_template"]
forbidden = ["general.url"]

[chat_template]
lint_clean = true

[memory]
ctx = 8192
cache_type = "q8_0"
budget = "2GiB"
"""


def make_work(work: Path) -> None:
    """The companion files (written by gguf-py, byte for byte the same every time), a policy, a
    template and a conversation in ``work``."""
    from tests.companion_files import write_base, write_control_vector, write_imatrix, write_lora, write_projector

    work.mkdir(parents=True, exist_ok=True)
    write_base(work / "base.gguf")
    write_base(
        work / "base16.gguf",
        f16=frozenset(f"blk.{i}.{r}.weight" for i in range(2) for r in ("ffn_up", "ffn_down", "attn_q")),
    )
    write_projector(work / "mmproj.gguf")
    write_lora(work / "lora.gguf", {"blk.0.attn_q.weight": (64, 64), "blk.1.ffn_down.weight": (128, 64)})
    names = [
        f"blk.{i}.{r}"
        for i in range(2)
        for r in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_gate", "ffn_down")
    ]
    values = {}
    for j, n in enumerate(names):
        width = 128 if n.endswith("ffn_down") else 64
        values[n] = ([float((j * 7 + k) % 13 + 1) for k in range(width)], float(10 + j))
    write_imatrix(work / "imatrix.gguf", {n + ".weight": v for n, v in values.items()})
    write_control_vector(work / "cvec.gguf")
    (work / "policy.toml").write_text(POLICY, encoding="utf-8")
    (work / "t.jinja").write_text(T_JINJA, encoding="utf-8")
    (work / "conv.json").write_text('[{"role": "user", "content": "hi"}]', encoding="utf-8")
    # the manifest the verify cases read (the manifest case writes its own)
    code, _ = cli_invoke(
        [
            "manifest",
            str(FIXTURES / "raw-base.gguf"),
            str(FIXTURES / "all-types-v3.gguf"),
            "-o",
            str(work / "verify.json"),
        ]
    )
    assert code == 0


def make_holes(out: Path, smollm2: Path, gemma: Path) -> None:
    """The recorded runs' models (header-only files of their full size; tests/llamacpp_logs.py)."""
    from tests.llamacpp_logs import LOGS as RUN_LOGS
    from tests.llamacpp_logs import PROJECTOR_LOGS, _write_holes

    out.mkdir(parents=True, exist_ok=True)
    args = ("--smollm2", str(smollm2), "--gemma", str(gemma))
    _write_holes(RUN_LOGS / "make_headers.py", RUN_LOGS / "headers-manifest.tsv", out, *args)
    _write_holes(PROJECTOR_LOGS / "make_projectors.py", PROJECTOR_LOGS / "headers-manifest.tsv", out)


LARGE = 256 << 10  # larger outputs are recorded as their sha256 and length

_SECONDS = re.compile(rb'("seconds": )[0-9.e-]+')


def run_case(case: Case, invoke: Callable[[list[str]], tuple[int, bytes]], paths: dict[str, str]) -> bytes:
    """The snapshot of one case: ``exit N``, then stdout with the paths normalised."""
    argv = [a.format(**paths) for a in case.argv]
    code, data = tool_invoke(case.tool, argv, paths) if case.tool else invoke(argv)
    for key, label in (("W", "$WORK"), ("H", "$HOLES"), ("F", "$FIXTURES")):
        data = data.replace(paths[key].encode(), label.encode())
    for key in REAL:
        data = data.replace(paths[key].encode(), f"$MODELS/{Path(paths[key]).name}".encode())
    data = _SECONDS.sub(rb"\g<1>0.0", data)
    if len(data) > LARGE:  # a whole vocabulary: its digest, not 13 MB in the repository
        data = f"sha256 {hashlib.sha256(data).hexdigest()} bytes {len(data)}\n".encode()
    return f"exit {code}\n".encode() + data


def tool_invoke(name: str, argv: list[str], paths: dict[str, str]) -> tuple[int, str]:
    """An MCP tool called in this process (its roots: the folders of the cases' files): 0 and its
    JSON text, or 1 and the tool error's text."""
    import json

    from ggufx.mcp.access import Access
    from ggufx.mcp.tools import GGUFTools, _guarded

    roots = [p for p in (paths["W"], paths["F"], paths["H"], str(Path(paths["smollm2"]).parent)) if os.path.isdir(p)]
    if name == "list_models":  # it lists every root: only the work folder, the same in every run
        roots = roots[:1]
    kwargs = {}
    for pair in argv:
        key, _, raw = pair.partition("=")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    res = _guarded(getattr(GGUFTools(Access(roots, False, None)), name))(**kwargs)
    return int(bool(res.is_error)), (res.content[0].text + "\n").encode()


def cli_invoke(argv: list[str]) -> tuple[int, bytes]:
    from click.testing import CliRunner

    from ggufx.cli import main

    r = CliRunner().invoke(main, argv, catch_exceptions=False)
    return r.exit_code, r.stdout_bytes


def snapshot_path(case: Case) -> Path:
    return SNAPSHOTS / f"{case.name}.json.txt"


def _main(argv: list[str]) -> int:
    import tempfile

    cache = Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))
    real = {"smollm2": cache / "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma": cache / "gemma-3-270m-q4_k_m.gguf"}
    for p in real.values():
        if not p.is_file():
            print(f"{p} is missing: run the tests once (they fetch it)", file=sys.stderr)
            return 2
    SNAPSHOTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work, holes = Path(tmp) / "work", Path(tmp) / "holes"
        make_work(work)
        make_holes(holes, real["smollm2"], real["gemma"])
        paths = {"F": str(FIXTURES), "W": str(work), "H": str(holes), **{k: str(v) for k, v in real.items()}}
        for case in cases():
            if argv and not any(case.name.startswith(p) for p in argv):
                continue
            snapshot_path(case).write_bytes(run_case(case, cli_invoke, paths))
            print(case.name)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
