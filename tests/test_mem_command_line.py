"""``mem --llama-args`` reads a pasted llama.cpp command line whole: the program name sets the tool,
``-m`` names the model (or must agree with FILE), an argument llama.cpp refuses is refused, and
llama.cpp's warnings about the context are repeated (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

from ggufx.analysis.memory.llamaargs import TOOL_NAMES
from ggufx.results.memory import TOOLS
from tests.support import FIXTURES, CliRun

SERVER_LINE = "-ngl 99 -c 32768 -fa on -ctk q8_0 -ctv q8_0 -np 2"


def _mem(cli: CliRun, *args: str) -> dict:  # type: ignore[type-arg]
    r = cli("mem", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _compute(d: dict) -> dict[str, int]:  # type: ignore[type-arg]
    return {b["buft"]: b["bytes"] for b in d["buffers"] if b["kind"] == "compute"}


def test_the_program_name_sets_the_tool(cli: CliRun, smollm2_path: Path) -> None:
    m = str(smollm2_path)
    pasted = _mem(cli, m, "--llama-args", f"llama-server -m {m} {SERVER_LINE}")
    told = _mem(cli, m, "--tool", "llama-server", "--llama-args", SERVER_LINE)
    cli_tool = _mem(cli, m, "--llama-args", SERVER_LINE)
    assert pasted["buffers"] == told["buffers"]
    assert _compute(pasted) != _compute(cli_tool)  # llama-cli reserves logits for a whole micro-batch
    # a path to the program names it too
    assert _mem(cli, m, "--llama-args", f"./build/bin/llama-server {SERVER_LINE}")["buffers"] == told["buffers"]


def test_m_names_the_model_or_must_agree_with_file(cli: CliRun, smollm2_path: Path) -> None:
    m = str(smollm2_path)
    alone = _mem(cli, "--llama-args", f"llama-server -m {m} {SERVER_LINE}")
    both = _mem(cli, m, "--llama-args", f"llama-server -m {m} {SERVER_LINE}")
    assert alone["buffers"] == both["buffers"] and alone["path"] == m
    other = cli("mem", str(FIXTURES / "all-types-v3.gguf"), "--llama-args", f"llama-server -m {m}")
    assert other.exit_code == 2 and other.stderr.count("\n") == 1
    assert "the command line's -m" in other.stderr and "is not FILE" in other.stderr
    none = cli("mem", "--llama-args", "llama-server -c 4096")
    assert none.exit_code == 2 and "give the model" in none.stderr


def test_an_argument_llama_cpp_refuses_is_refused(cli: CliRun, smollm2_path: Path) -> None:
    m = str(smollm2_path)
    for line, named in (
        (f"llama-server -m {m} -c 4096 --bogus 5", "--bogus"),
        ("llama-completion -c 4096 --port 8080", "--port"),  # a server-only option
    ):
        r = cli("mem", m, "--llama-args", line)
        assert r.exit_code == 2 and r.stderr.startswith("ggufx: error:") and named in r.stderr, r.stderr
    mismatch = cli("mem", m, "--tool", "llama-cli", "--llama-args", "llama-server -c 4096")
    assert mismatch.exit_code == 2 and "runs llama-server" in mismatch.stderr


def test_llama_cpp_s_context_warnings(cli: CliRun, smollm2_path: Path) -> None:
    m = str(smollm2_path)  # trained on 8,192 tokens
    over = _mem(cli, m, "-c", "32768")
    assert over["warnings"] == [
        "llama_context: n_ctx_seq (32768) > n_ctx_train (8192) -- possible training context overflow"
    ]
    assert _mem(cli, m, "-c", "8192")["warnings"] == []
    text = cli("mem", m, "-c", "32768")
    assert text.exit_code == 0 and "warning: llama.cpp will log: llama_context: n_ctx_seq (32768)" in text.stderr


def test_no_repack_drops_the_repacked_copies(cli: CliRun, gemma_path: Path) -> None:
    gemma = str(gemma_path)  # Q4_K_M: its Q4_K matrices get a CPU_REPACK copy on an AVX2 CPU build
    repacked = {b["buft"] for b in _mem(cli, gemma, "--gpus", "none", "-c", "4096")["buffers"]}
    assert "CPU_REPACK" in repacked
    for args in (("-c", "4096", "--no-repack"), ("--llama-args", "-c 4096 -dev none --no-repack")):
        d = _mem(cli, gemma, "--gpus", "none", *args)
        assert "CPU_REPACK" not in {b["buft"] for b in d["buffers"]}, args


def test_the_request_knows_every_tool_the_command_line_may_name() -> None:
    assert set(TOOLS) == set(TOOL_NAMES)


def test_options_beside_llama_args_that_it_replaces_are_refused(cli: CliRun, smollm2_path: Path) -> None:
    """`--llama-args` carries a whole llama.cpp command line: `-c 8192 --llama-args "--spec-type draft-mtp"` used
    to size the training context without a word. An option it replaces is refused, named, exit 2; the companion
    files and ggufx's own options (--gpus, --fit, --check) still go beside it."""
    r = cli("mem", str(smollm2_path), "-c", "8192", "-ngl", "4", "--llama-args", "-fa on")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "-c, -ngl beside --llama-args" in r.stderr
    ok = cli("mem", "--json", str(smollm2_path), "--gpus", "24GiB", "--llama-args", "-c 8192 -ngl 4")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["n_ctx"] == 8192


def test_fit_of_a_model_without_a_kv_cache_prints_one_row(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """An encoder has no KV cache: the three cache types give the same answer, printed once as "any" (the JSON
    keeps its three rows), where a model with a KV cache keeps a row per type."""
    from tests.graph_arch_logs import cpu_model

    bert = str(cpu_model("bert", tmp_path, smollm2_path))
    text = cli("mem", bert, "--fit", "2GiB").stdout
    assert "any (the same for every type)" in text and "\nq8_0 " not in text
    assert len(json.loads(cli("mem", bert, "--fit", "2GiB", "--json").stdout)["fits"]) == 3
    text = cli("mem", str(smollm2_path), "--fit", "2GiB").stdout
    assert "any (the same" not in text and "\nq8_0 " in text and "\nq4_0 " in text


def test_what_does_not_fit_says_what_llama_cpp_does_then(cli: CliRun, gemma_path: Path, smollm2_path: Path) -> None:
    """A configuration that does not fit the --gpus given (exit 1) says that llama.cpp's -fit, on by default, would
    change the options left unset, and which `mem --fit` shows it; one that fits says nothing of it. A dense
    model's fit moves layers, an MoE's expert tensors: the fit's text says which."""
    short = cli("mem", str(gemma_path), "-c", "32768", "--gpus", "100MiB")
    assert short.exit_code == 1
    assert (
        "note: it does not fit as asked: llama.cpp's -fit (on by default) changes the options left unset (-ngl, -c, "
        "-ts, -ot) until it fits, and with none left fails to allocate; `ggufx mem FILE --fit 100MiB` with the same "
        "options shows what it sets"
    ) in short.stdout
    as_json = json.loads(cli("mem", str(gemma_path), "-c", "32768", "--gpus", "100MiB", "--json").stdout)
    assert any(n.startswith("it does not fit as asked") for n in as_json["notes"])
    fits = cli("mem", str(gemma_path), "-c", "4096", "--gpus", "24GiB")
    assert fits.exit_code == 0 and "does not fit as asked" not in fits.stdout
    dense = cli("mem", str(smollm2_path), "--fit", "120MiB", "-c", "8192").stdout
    assert "-ngl " in dense and "(layers moved off the GPUs)" in dense and "expert" not in dense, dense


def test_llama_cpp_s_words_for_ngl_and_fa(cli: CliRun, gemma_path: Path) -> None:
    """-ngl / -ngld take llama.cpp's auto and all (every layer here, as -1), -fa its synonyms (enabled, true, 1...),
    the same words --llama-args reads; anything else is one line naming the option and what it takes."""
    from ggufx.analysis.memory import llamaargs
    from ggufx.results.memory import FLASH_ATTN_WORDS, LAYERS_WORDS

    assert {w for w, v in FLASH_ATTN_WORDS.items() if v == "on"} == set(llamaargs._TRUTHY)
    assert {w for w, v in FLASH_ATTN_WORDS.items() if v == "off"} == set(llamaargs._FALSEY)
    assert {w for w, v in FLASH_ATTN_WORDS.items() if v == "auto"} == set(llamaargs._AUTO)
    g = str(gemma_path)

    def mem(*args: str) -> object:
        r = cli("mem", g, *(() if "--llama-args" in args else ("-c", "4096")), "--json", *args)
        assert r.exit_code == 0, (args, r.output)
        return json.loads(r.stdout)

    every = mem("-ngl", "-1")
    for word in LAYERS_WORDS:
        assert mem("-ngl", word) == every
        line = mem("--llama-args", f"-ngl {word} -c 4096")
        assert line["devices"] == every["devices"]  # type: ignore[index]
    assert mem("-ngl", "5") != every
    for word, meaning in FLASH_ATTN_WORDS.items():  # (-fa -1: click reads -1 as the next option, -fa as auto)
        if not word.startswith("-"):
            assert mem("-fa", word) == mem("-fa", meaning), word
    assert mem("-fa", "0") != mem("-fa", "on")
    for args, named, said in (
        (("-ngl", "x"), "'--n-gpu-layers' / '-ngl'", "'x' is not a number of layers, auto or all."),
        (("-ngld", "every"), "'--n-gpu-layers-draft' / '-ngld'", "'every' is not a number of layers, auto or all."),
        (("-fa", "ON"), "'--flash-attn' / '-fa'", "'ON' is not on, off or auto (or llama.cpp's enabled/true/1, "
         "disabled/false/0)."),
    ):  # fmt: skip
        r = cli("mem", g, *args)
        assert r.exit_code == 2 and r.stderr == f"ggufx: error: Invalid value for {named}: {said}\n", r.stderr
