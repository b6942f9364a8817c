"""llama.cpp command lines read whole: the program name sets the tool, -m/--mmproj/-md name files, every
argument llama.cpp defines is known (ggufx/analysis/memory/llama_arg_table.py, generated from arg.cpp),
an argument the tool does not accept is refused as llama.cpp refuses it - proved against the pinned
llama.cpp's own tools, argument by argument."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

from ggufx.analysis.memory import llama_arg_table as T
from ggufx.analysis.memory.llamaargs import _MEMORY, NOT_MODELLED, TOOL_NAMES, _options, accepted, parse_args
from ggufx.errors import InputError
from tests.support import LLAMA_CPP_VERSION, CliRun

ROOT = Path(__file__).resolve().parent.parent
SEEN = "llama-server -m model.gguf -ngl 99 -c 32768 -fa on -ctk q8_0 -ctv q8_0 -np 2"  # the issue's line


def _refused(line: str, **kw: object) -> str:
    with pytest.raises(InputError) as e:
        parse_args(line, **kw)  # type: ignore[arg-type]
    return str(e.value)


# --- the program name ----------------------------------------------------------------------------


def test_a_pasted_llama_server_line_is_read_as_llama_server() -> None:
    a = parse_args(SEEN)
    assert a.tool == "llama-server" and a.model == "model.gguf"
    c = a.context
    assert (c.n_ctx, c.n_parallel, c.flash_attn, c.cache_type_k, c.cache_type_v) == (32768, 2, "on", "q8_0", "q8_0")
    assert c.n_outputs_max == 2  # llama-server reserves logits per slot; a CLI tool for a whole batch (0)
    assert a.offload.n_gpu_layers == 99
    bare = SEEN.removeprefix("llama-server ")
    assert parse_args(bare, server=True).context == c  # the old way to say llama-server
    assert parse_args(bare).context.n_outputs_max == 0 and parse_args(bare).tool is None
    assert parse_args("llama-completion " + bare.replace(" -np 2", "")).context.n_outputs_max == 0


@pytest.mark.parametrize(
    "program,tool",
    [
        ("llama-server", "llama-server"),
        ("./build/bin/llama-server", "llama-server"),
        ("/opt/llama.cpp/build/bin/llama-cli", "llama-cli"),
        ("llama-completion", "llama-completion"),
        ("llama-mtmd-cli", "llama-mtmd-cli"),
        ("llama-fit-params", "llama-fit-params"),
        ("llama-server.exe", "llama-server"),
    ],
)
def test_the_program_name_sets_the_tool(program: str, tool: str) -> None:
    assert parse_args(f"{program} -c 4096").tool == tool
    assert parse_args([program, "-c", "4096"]).tool == tool


@pytest.mark.parametrize("program", ["llama-perplexity", "python", "model.gguf", "llama-serve"])
def test_a_program_ggufx_does_not_read_is_refused(program: str) -> None:
    msg = _refused(f"{program} -c 4096")
    assert repr(program) in msg and "llama-server" in msg


def test_the_tool_asked_for_and_the_program_must_agree() -> None:
    assert parse_args("-c 8", tool="llama-server").tool == "llama-server"
    assert parse_args("llama-server -c 8", tool="llama-server").tool == "llama-server"
    assert "runs llama-server, but the tool asked for is llama-cli" in _refused("llama-server -c 8", tool="llama-cli")


# --- every argument known, the unknown refused -----------------------------------------------------


def test_an_unknown_argument_is_refused_as_llama_cpp_words_it() -> None:
    assert "invalid argument: --bogus" in _refused("llama-server -ngl 99 --bogus 5")
    assert "invalid argument: --bogus" in _refused("-ngl 99 --bogus 5")  # no program: still unknown
    assert "invalid argument: other.gguf" in _refused("-m model.gguf other.gguf")  # no positional arguments


def test_an_argument_of_another_tool_is_refused() -> None:
    # --port is llama-server's; -p (the prompt) is excluded from llama-server; -md is no llama-completion's
    assert "invalid argument: --port (llama-completion does not accept it; llama-server" in _refused(
        "llama-completion -m m.gguf --port 8080"
    )
    assert "invalid argument: -p" in _refused("llama-server -m m.gguf -p hi")
    assert "invalid argument: -md" in _refused("llama-completion -m m.gguf -md d.gguf")
    assert "(llama-fit-params does not accept it; llama-server, llama-cli, llama-mtmd-cli do)" in _refused(
        "llama-fit-params --mmproj p.gguf"
    )
    # llama-perplexity's argument: llama.cpp knows it, none of the tools ggufx reads accepts it
    assert "(llama-server does not accept it)" in _refused("llama-server --ppl-stride 5")
    assert "(llama-server, llama-cli, llama-completion, llama-mtmd-cli, llama-fit-params do not" in _refused(
        "--ppl-stride 5"
    )
    assert parse_args("llama-server -m m.gguf -md d.gguf").draft == "d.gguf"
    # no program, no tool: any tool ggufx reads may accept it
    assert parse_args("--port 8080 -p hi").others == ["--port", "8080", "-p", "hi"]


def test_options_that_do_not_change_memory_are_accepted_with_their_values() -> None:
    a = parse_args(
        "llama-server -t 8 --temp -1 --host 0.0.0.0 --jinja -c 4096 --no-warmup --control-vector-layer-range 1 2"
    )
    assert a.context.n_ctx == 4096
    assert a.others == ["-t", "8", "--temp", "-1", "--host", "0.0.0.0", "--jinja", "--no-warmup",
                        "--control-vector-layer-range", "1", "2"]  # fmt: skip


def test_a_missing_value_is_refused_as_llama_cpp_words_it() -> None:
    assert 'error while handling argument "-c": expected value for argument' in _refused("llama-server -ngl 9 -c")
    assert 'argument "--control-vector-layer-range": expected value' in _refused("--control-vector-layer-range 1")


def test_long_names_with_underscores_and_negated_forms() -> None:
    a = parse_args("--ctx_size 4096 --n_gpu_layers 7 --no-kv-offload -no-kvu")
    assert (a.context.n_ctx, a.offload.n_gpu_layers, a.context.no_kv_offload, a.context.kv_unified) == (
        4096,
        7,
        True,
        False,
    )
    assert parse_args("-nkvo -kvo").context.no_kv_offload is False  # the last one wins
    assert parse_args("--gpu-layers 5").offload.n_gpu_layers == 5  # every alias arg.cpp gives
    assert "invalid argument: -ctx_size" in _refused("-ctx_size 4")  # only long names


def test_files_named_on_the_line() -> None:
    a = parse_args("llama-server --model m.gguf --mmproj p.gguf --model-draft d.gguf -ngld 5 -ctkd q8_0")
    assert (a.model, a.mmproj, a.draft) == ("m.gguf", "p.gguf", "d.gguf")
    assert a.draft_offload is not None and a.draft_offload.n_gpu_layers == 5
    assert a.draft_context is not None and a.draft_context.cache_type_k == "q8_0"


def test_load_mode_decides_mmap_and_no_mmap_is_gone() -> None:
    assert parse_args("-lm none").offload.mmap is False
    assert parse_args("-lm mmap+mlock").offload.mmap is True and parse_args("").offload.mmap is True
    assert "invalid argument: --no-mmap" in _refused("--no-mmap")  # this llama.cpp has -lm instead
    assert "invalid value 'fast'" in _refused("-lm fast")


@pytest.mark.parametrize(
    "line,phrase",
    [
        ("-c many", "'many' is not an integer"),
        ("-fa yes", "unknown value for --flash-attn: 'yes'"),
        ("-ctk q3_k", "Unsupported cache type: q3_k"),
        ("-sm rows", "invalid value 'rows'"),
        ("-ncmoe -1", "invalid value -1"),
        ('-c "4096', "cannot split the command line"),
    ],
)
def test_bad_values_of_memory_arguments(line: str, phrase: str) -> None:
    assert phrase in _refused(line)


def test_arguments_that_change_memory_ggufx_does_not_model_are_named() -> None:
    a = parse_args("llama-server -ncffn 4 -c 16 --spec-draft-cpu-moe")
    assert a.unmodelled == ["-ncffn", "--spec-draft-cpu-moe"]
    assert parse_args("-c 16").unmodelled == []


def test_every_memory_argument_is_one_llama_cpp_defines() -> None:
    firsts = {names[0] for names, *_ in T.ARGS}
    assert set(_MEMORY) <= firsts and NOT_MODELLED <= firsts


@pytest.mark.parametrize("line", ["llama-server -m m.gguf --bogus 5", "-c 4096 --no-mmap"])
def test_mem_refuses_an_unknown_argument_with_exit_2(cli: CliRun, line: str) -> None:
    from tests.support import FIXTURES

    r = cli("mem", str(FIXTURES / "all-types-v3.gguf"), "--llama-args", line)
    assert r.exit_code == 2 and "invalid argument: " in r.stderr and "Traceback" not in r.output


# --- the table is generated from the pinned llama.cpp ------------------------------------------------


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_llama_args", ROOT / "tools" / "gen_llama_args.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_gen_llama_args"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.llamacpp
def test_committed_table_is_generated_from_the_pinned_llama_cpp() -> None:
    gen = _gen()
    src = gen.default_source(LLAMA_CPP_VERSION)
    if src is None:
        pytest.skip("llama.cpp source not found (run ../shared/tools/build-llama-cpp.sh or set LLAMA_CPP_SRC)")
    table = ROOT / "ggufx" / "analysis" / "memory" / "llama_arg_table.py"
    assert gen.generate(src) == table.read_text(encoding="utf-8"), "llama_arg_table.py is stale: run the generator"
    assert T.LLAMA_CPP_VERSION == LLAMA_CPP_VERSION
    # as many options as arg.cpp adds (every add_opt(common_arg(...)) is one row)
    text = (Path(src) / "common" / "arg.cpp").read_text(encoding="utf-8")
    assert len(T.ARGS) == text.count("add_opt(common_arg(")


def test_the_generated_table_reads_llama_embeddings_example_from_its_source() -> None:
    """llama-embedding is an example (examples/embedding/embedding.cpp), not a tool: the generator reads its
    common_params_parse call as the tools' (LLAMA_EXAMPLE_EMBEDDING); a line without a program is still read as the
    other tools read it (--attention is llama-embedding's own)."""
    gen = _gen()
    assert gen.TOOL_SOURCES["llama-embedding"] == "examples/embedding/embedding.cpp"
    assert T.TOOLS["llama-embedding"] == "EMBEDDING" and TOOL_NAMES[-1] == "llama-embedding"
    src = gen.default_source(LLAMA_CPP_VERSION)
    if src is not None:
        files, _ = gen.read_sources(src)
        assert gen.tool_examples(files)["llama-embedding"] == "EMBEDDING"
    assert accepted("--attention", "llama-embedding") and not accepted("--attention")
    assert not accepted("--attention", "llama-server")


def test_generator_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    gen = _gen()
    with pytest.raises(gen.GenError, match="handler parameter"):
        gen.handler_values('{"-x"}, "N", "help", [](common_params & params, float value) {}', "arg.cpp:1")
    with pytest.raises(gen.GenError, match="expected a string literal"):
        gen.string_list('"-a", NAME', "arg.cpp:1")
    with pytest.raises(gen.GenError, match="missing"):
        gen.read_sources(tmp_path)


# --- proof: llama.cpp's own tools accept and refuse what ggufx does -----------------------------------


def _llama(binary: Path, *args: str) -> tuple[str, bool]:
    """How ``binary --help ARGS...`` reacts: ``invalid`` (error: invalid argument), ``value`` (expected
    value for argument: the argument takes one) or ``flag`` (parsed; --help then prints usage)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    p = subprocess.run([str(binary), "--help", *args], capture_output=True, text=True, timeout=60, env=env)
    err = p.stderr + p.stdout[-2000:]
    if f"error: invalid argument: {args[0]}" in err:
        return "invalid", p.returncode != 0
    if "expected value for argument" in err:
        return "value", p.returncode != 0
    return "flag", True


@pytest.mark.llamacpp
def test_llama_cpp_and_ggufx_agree_on_every_argument_of_every_tool(llama_bin: Path) -> None:
    names = sorted({n for names, neg, *_ in T.ARGS for n in (*names, *neg)})
    tools = [t for t in TOOL_NAMES if (llama_bin / t).is_file()]
    assert {"llama-server", "llama-completion", "llama-mtmd-cli", "llama-fit-params"} <= set(tools)
    cases = [(t, n) for t in tools for n in [*names, "--bogus", "--ctx_size", "-ctx_size", "model.gguf"]]
    takes = {n: values for names, neg, values, *_ in T.ARGS for n in (*names, *neg)}
    takes["--ctx_size"] = 1
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda c: _llama(llama_bin / c[0], c[1]), cases))
    wrong = []
    for (tool, name), (reaction, exited) in zip(cases, seen):
        ours = "invalid" if not accepted(name, tool) else "value" if takes[name] else "flag"
        if reaction != ours or not exited:
            wrong.append(f"{tool} {name}: llama.cpp {reaction}, ggufx {ours}")
    assert not wrong, f"{len(wrong)} of {len(cases)} disagree:\n" + "\n".join(wrong[:50])
    # each tool refuses some argument another accepts, so the cases above test the tool filter
    for tool in tools:
        assert any(not accepted(n, tool) and accepted(n, "llama-server") for n in names) or tool == "llama-server"


@pytest.mark.llamacpp
def test_llama_cpp_wants_two_values_where_ggufx_does(llama_bin: Path) -> None:
    two = [n for names, neg, values, *_ in T.ARGS if values == 2 for n in names]
    assert two
    for name in two:
        assert _llama(llama_bin / "llama-server", name, "1")[0] == "value"  # one value is not enough


@pytest.mark.llamacpp
def test_the_issues_line_against_llama_server(llama_bin: Path) -> None:
    # llama.cpp parses the whole line (the program name is argv[0]); with --bogus it refuses it by name
    words = SEEN.split()[1:]
    assert _llama(llama_bin / "llama-server", "--bogus", *words)[0] == "invalid"
    assert _llama(llama_bin / "llama-server", *words)[0] == "flag"  # every argument accepted, then --help
    assert "invalid argument: --bogus" in _refused(SEEN + " --bogus 5")
    assert parse_args(SEEN).others == []


def test_options_table_for_each_tool_matches_the_add_opt_filter() -> None:
    # -np is defined twice in arg.cpp (if ex == SERVER / else): each tool gets one, all take a value
    for tool in TOOL_NAMES:
        assert _options(tool)["-np"].values == 1
    assert accepted("--port", "llama-server") and not accepted("--port", "llama-completion")
    assert accepted("-p", "llama-completion") and not accepted("-p", "llama-server")  # set_excludes
    assert accepted("--mmproj", "llama-mtmd-cli") and not accepted("--mmproj", "llama-completion")
    assert accepted("--port") and accepted("-p")  # no tool: any tool ggufx reads


# --- llama.cpp's warnings about the context size -------------------------------------------------------


_WARNED = ("n_ctx_seq (", "not divisible by n_seq_max", "exceeds the training context", "model was trained on only")
_TOOL = {"completion": "llama-completion", "server": "llama-server", "mtmd": "llama-mtmd-cli"}


def test_context_warnings_are_the_ones_every_recorded_llama_cpp_run_printed(hole_models: dict[str, Path]) -> None:
    import ggufx
    from ggufx.analysis.memory.context_warnings import context_warnings, draft_context_warnings
    from ggufx.analysis.memory.hparams import hparams, pad

    from .llamacpp_logs import LOGS, RUNS

    compared = warned = 0
    for rid, run in RUNS.items():
        if run["tool"] not in _TOOL:
            continue  # llama-fit-params tries many contexts
        args = parse_args(run["args"].replace("@", ""), tool=_TOOL[run["tool"]])
        if args.model not in hole_models:
            continue
        log = (LOGS / f"{rid}.log").read_text()
        printed = [line[2:] for line in log.splitlines() if line.startswith("W ") and any(w in line for w in _WARNED)]
        ours = context_warnings(ggufx.open(hole_models[args.model]), args.context, args.tool)
        if args.draft is not None:  # the draft's own context, after the target's (the target's cells)
            n_ctx = pad(args.context.n_ctx or hparams(ggufx.open(hole_models[args.model])).n_ctx_train)
            draft = ggufx.open(hole_models[args.draft])
            ours += draft_context_warnings(draft, args.draft_context or args.context, n_ctx)
        if "failed to initialize the context" in log or "GGML_ASSERT" in log:  # llama-completion warns of the
            # training context only after the context is made (completion.cpp:167): not where it is refused or aborts
            ours = [w for w in ours if "model was trained on only" not in w]
        assert ours == printed, rid
        compared += 1
        warned += bool(printed)
    # smol at -c 16384, Llama 3.2 1B at -c 262144; gpt-oss 20B and 29 other models (the second recordings) and
    # 51 more (the third) at -c 32768 -np 3 (n_ctx not divisible by n_seq_max); 156 more in the session-8
    # recordings (the builders of sessions 6-8: beyond the training context, -np 3); 65 more in session 9's (the
    # third round's builders, and an EAGLE3 head's own context beyond its 2048 training tokens); 217 more in session
    # 11's (session 10's published models: -c 32768 -np 3, contexts beyond the shorter training contexts); 29 more in
    # session 12's (session 11's published models, the same options); 10 more in session 13's (Maincoder-1B's
    # 2,048-token training context at -c 32768, -np 3 of PLM and Qwen3.8-Flash-Next)
    assert compared > 2200 and warned == 560


def test_llama_embeddings_context_warning(smollm2_path: Path) -> None:
    """llama-embedding compares llama_n_ctx with the training context (examples/embedding/embedding.cpp:152-155),
    after llama_context's own warning; the other tools do not print its line."""
    import ggufx
    from ggufx.analysis.memory.context_warnings import context_warnings

    smol = ggufx.open(smollm2_path)  # trained on 8192 tokens
    over = parse_args("llama-embedding -c 16384")  # 256 sequences over one unified cache of 16384
    assert context_warnings(smol, over.context, over.tool) == [
        "llama_context: n_ctx_seq (16384) > n_ctx_train (8192) -- possible training context overflow",
        "main: warning: model was trained on only 8192 context tokens (16384 specified)",
    ]
    fits = parse_args("llama-embedding -c 8192")
    assert context_warnings(smol, fits.context, fits.tool) == []
    split = parse_args("llama-embedding -c 16384 -np 2")  # two sequences of 8192: the whole context still compared
    assert context_warnings(smol, split.context, split.tool) == [
        "main: warning: model was trained on only 8192 context tokens (16384 specified)"
    ]
    completion = parse_args("llama-completion -c 16384")
    assert not any(w.startswith("main:") for w in context_warnings(smol, completion.context, completion.tool))


@pytest.mark.llamacpp
def test_llama_embedding_prints_the_warnings_ggufx_gives(llama_embedding: Path, smollm2_path: Path) -> None:
    import ggufx
    from ggufx.analysis.memory.context_warnings import context_warnings

    for line in ("-c 16384", "-c 8192", "-c 12000 -np 2"):
        cmd = [str(llama_embedding), "-m", str(smollm2_path), *line.split()]
        p = subprocess.run(
            [*cmd, "-dev", "none", "-p", "hi", "--no-warmup", "-fit", "off"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        printed = [
            x.split(" W ", 1)[1]
            for x in (p.stdout + p.stderr).splitlines()
            if " W " in x and any(w in x for w in _WARNED)
        ]
        args = parse_args("llama-embedding " + line)
        assert context_warnings(ggufx.open(smollm2_path), args.context, args.tool) == printed, line


def test_context_warnings_of_each_tool(smollm2_path: Path) -> None:
    import ggufx
    from ggufx.analysis.memory.context_warnings import context_warnings

    smol = ggufx.open(smollm2_path)  # trained on 8192 tokens
    assert context_warnings(smol, parse_args("-c 8192").context) == []
    assert context_warnings(smol, parse_args("").context) == []  # 0: the training context
    over = parse_args("llama-server -c 16384")  # 4 unified slots: one sequence of 16384
    assert context_warnings(smol, over.context, over.tool) == [
        "llama_context: n_ctx_seq (16384) > n_ctx_train (8192) -- possible training context overflow",
        "srv    load_model: the slot context (16384) exceeds the training context of the model (8192) - capping",
    ]
    split = parse_args("llama-server -c 16384 -np 2")  # two sequences of 8192: within the training context
    assert context_warnings(smol, split.context, split.tool) == []
    odd = parse_args("llama-completion -c 1000 -np 3").context  # pad(1000)=1024, pad(1024 // 3)=512, x3
    assert context_warnings(smol, odd, "llama-completion") == [
        "llama_context: n_ctx is not divisible by n_seq_max - rounding down to 1536"
    ]
