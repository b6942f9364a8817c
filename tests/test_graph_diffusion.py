"""The diffusion language models (issue 25): ``dream`` (Dream-v0-7B), ``llada`` (LLaDA-8B), ``llada-moe``
(LLaDA-MoE-7B-A1B) and ``rnd1`` (RND1-Base), which llama.cpp runs with llama-diffusion-cli.

llama.cpp makes no memory for them (llama-model.cpp create_memory: ``res = nullptr``) and each model file's
``load_arch_hparams`` sets ``causal_attn`` false: no KV cache, whatever the context, and a graph that attends over
the micro-batch alone (``build_attn_inp_no_cache``). graph/models/diffusion.py rebuilds the four graphs (llama.cpp's
qwen2, llama and qwen3moe layers but for that attention): on every CPU run recorded (tests/fixtures/llamacpp-logs-cpu:
small models of each, the published shapes) every buffer equals llama.cpp's, the compute buffer to the 0.0001 MiB of
``~llama_context``'s line where the log has it, and the graph equals llama.cpp's node for node where dumped.

llama-diffusion-cli creates its context from ``llama_context_default_params`` with the user's -c, -b, -ub, -fa and
cache types (examples/diffusion/diffusion-cli.cpp): the reserve is llama-completion's, as its recorded runs show
(tests/fixtures/llamacpp-logs-cpu/diffusion); what ggufx answers is that reserve. The tool does not pass -np,
--no-repack or tensor overrides on to llama.cpp (its model parameters are -ngl, -dev, the load mode and
--check-tensors alone): its run with --no-repack repacks. It asks for the logits of every token it denoises (the
``-ub`` tokens of its sequence), so its first decode grows the output buffer from the context's one row to one row
per token (``diffusion.tool_output_bytes``, proven by the tool's recorded allocations); ggufx's breakdown gives
that grown buffer (a note says so: both tools print the context's row per sequence, which the logs still prove)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import arch_of, builder_of
from ggufx.analysis.memory.buffers import NO_MEMORY, breakdown
from ggufx.analysis.memory.graph.models.diffusion import DIFFUSION as DIFFUSION_ARCHS
from ggufx.analysis.memory.graph.models.diffusion import tool_output_bytes
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from tests.support import LLAMA_CPP_VERSION

from .graph_arch_logs import (
    CPU_LOGS,
    Refused,
    assert_buffers_equal,
    assert_compute_equal,
    assert_no_cache,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    buffers_mib,
    cpu_family,
    cpu_runs,
    node_for_node_test,
    replay_cpu,
)

SMALL = ("dream", "llada", "llada-moe", "rnd1")
PUBLISHED = ("dream-7b", "llada-8b", "llada-moe-7b", "rnd1-30b")
VARIANTS = ("llada-bias",)  # llada with the optional tensors its loader takes
MODELS = SMALL + VARIANTS + PUBLISHED
RUNS, files = cpu_family(MODELS, "diffusion", tuple(n for n in MODELS if cpu_runs(n)))
DIFFUSION = CPU_LOGS / "diffusion"
DIFFUSION_MATRIX = [
    line.split("\t")
    for line in (DIFFUSION / "diffusion_matrix").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
DIFFUSION_RUNS = [(rid, name) for rid, name, _ in DIFFUSION_MATRIX]
DIFFUSION_ARGS = {rid: args for rid, _, args in DIFFUSION_MATRIX}
SRC = (
    Path(os.environ.get("LLAMA_CPP_HOME", str(Path.home() / ".cache" / f"llama.cpp-{LLAMA_CPP_VERSION}")))
    / "src"
    / "llama.cpp"
)


def test_registered_without_memory_with_the_diffusion_builder() -> None:
    for name in SMALL:
        a = arch_of(name)
        assert a is not None and name in NO_MEMORY and builder_of(name) == "diffusion", name
        assert a.moe == (name in ("llada-moe", "rnd1")), name


def test_llama_cpp_makes_no_memory_and_no_causal_mask_for_them() -> None:
    """What the registry says, read from llama.cpp's source: create_memory's memory-less cases name the four, they
    are llm_arch_is_diffusion's four (the models llama-diffusion-cli runs), and each model file's load_arch_hparams
    sets causal_attn false and its graph takes build_attn_inp_no_cache."""
    if not (SRC / "src" / "llama-model.cpp").is_file():
        pytest.skip(f"llama.cpp's source is not at {SRC}")
    text = (SRC / "src" / "llama-model.cpp").read_text()
    body = text[text.index("llama_model::create_memory(") :]
    none_cases = body[: body.index("res = nullptr;")]
    none_cases = none_cases[none_cases.index("switch (arch)") :]
    for enum in ("LLM_ARCH_DREAM", "LLM_ARCH_LLADA", "LLM_ARCH_LLADA_MOE", "LLM_ARCH_RND1"):
        assert f"case {enum}:" in none_cases, enum
    arch_cpp = (SRC / "src" / "llama-arch.cpp").read_text()
    names = dict(re.findall(r'\{\s*(LLM_ARCH_\w+),\s*"([^"]+)"\s*\}', arch_cpp))
    is_diffusion = arch_cpp[arch_cpp.index("bool llm_arch_is_diffusion(") :]
    is_diffusion = is_diffusion[: is_diffusion.index("return true;")]
    assert sorted(names[e] for e in re.findall(r"case (LLM_ARCH_\w+):", is_diffusion)) == sorted(DIFFUSION_ARCHS)
    assert sorted(DIFFUSION_ARCHS) == sorted(SMALL)
    for name in SMALL:
        a = arch_of(name)
        assert a is not None
        src = (SRC / "src" / "models" / a.source).read_text()
        assert re.search(r"hparams\.causal_attn\s*=\s*false", src), name
        assert "build_attn_inp_no_cache()" in src and "build_attn_inp_kv" not in src, name


@pytest.mark.parametrize("name", SMALL)
def test_the_runs_cover_flash_attention_off_parallel_sequences_micro_batches_and_repacking(name: str) -> None:
    extra = ("--cpu-moe",) if name in ("llada-moe", "rnd1") else ()
    assert_runs_cover(name, ("-fa off", "-np 3", "--no-repack", "-ub ", *extra), at_least=5)


@pytest.mark.parametrize(("name", "rid"), RUNS)
def test_no_cache_and_every_buffer_equals_llama_cpp(name: str, rid: str, files: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, files[name])
    assert_no_cache(text, bd)
    assert_buffers_equal(text, bd, ("model",))
    # the output buffer: llama-diffusion-cli's after its first decode (a row of logits per token of the
    # micro-batch), not the context's row per sequence that llama-completion printed
    n_vocab, n_ubatch, n_seq = (_log_int(text, k) for k in ("n_vocab", "n_ubatch", "n_seq_max"))
    assert parse_log(text).buffers["output"] == {"CPU": round(4 * n_vocab * n_seq / 2**20, 2)}
    assert [b.bytes for b in bd.buffers if b.kind == "output"] == [tool_output_bytes(n_vocab, n_ubatch, n_seq)]
    assert any(n.startswith("output buffer: llama-diffusion-cli's run after its first decode") for n in bd.notes)


def _log_int(text: str, key: str) -> int:
    m = re.search(rf"(?:print_info|llama_context): {key} += (\d+)", text)
    assert m, key
    return int(m.group(1))


@pytest.mark.parametrize(("rid", "name"), DIFFUSION_RUNS)
def test_llama_diffusion_cli_reserves_what_llama_completion_reserves(
    rid: str, name: str, files: dict[str, Path]
) -> None:
    """llama-diffusion-cli's run (one denoising step) with the options of the llama-completion run of the same id:
    the same weights (but --no-repack, which the tool does not pass on: it repacks), output buffer and compute
    buffer, and ggufx's answer equals it."""
    theirs_text = (DIFFUSION / f"{rid}.log").read_text()
    assert "# exit status: 0" in theirs_text and "# command: diffusion-cli" in theirs_text
    tool, completion = parse_log(theirs_text).buffers, parse_log((CPU_LOGS / f"{rid}.log").read_text()).buffers
    assert _r2(tool["compute"]) == _r2(completion["compute"]) and tool["output"] == completion["output"]
    assert "compute buffer size is" in theirs_text
    text, bd = replay_cpu(rid, files[name])
    assert_compute_equal(theirs_text, bd)
    if "--no-repack" in text.splitlines()[1]:
        assert "CPU_REPACK" in tool["model"] and "CPU_REPACK" not in completion["model"]
        # the weights of llama-completion's run without it
        assert tool["model"] == parse_log((CPU_LOGS / f"{name}-c8192.log").read_text()).buffers["model"]
    else:
        assert tool["model"] == completion["model"] == buffers_mib(bd, "model")


@pytest.mark.parametrize(("rid", "name"), DIFFUSION_RUNS)
def test_the_tools_first_decode_grows_the_output_buffer_to_every_tokens_logits(
    rid: str, name: str, files: dict[str, Path]
) -> None:
    """The buffers llama-diffusion-cli allocated in order (diffusion/<id>.allocs, alloc_shim.c): the weights, the
    context's output buffer (n_vocab floats for the one sequence), the compute buffer (ggufx's), then, at the first
    decode, the output buffer of every token's logits (``tool_output_bytes``): ggufx's output buffer."""
    rows = [ln.split("\t") for ln in (DIFFUSION / f"{rid}.allocs").read_text().splitlines() if not ln.startswith("#")]
    sizes = [(buft, int(n)) for buft, n in rows]
    _, bd = replay_cpu(rid, files[name])
    model = ggufx.open(files[name])
    n_vocab = len(model.metadata["tokenizer.ggml.tokens"])
    a = parse_args("-m x " + DIFFUSION_ARGS[rid])
    n_ubatch = min(a.context.n_ubatch, a.context.n_batch)
    output = [b.bytes for b in bd.buffers if b.kind == "output"]
    compute = [b.bytes for b in bd.buffers if b.kind == "compute" and b.bytes > 1]
    assert sizes[-3] == ("CPU", 4 * n_vocab)
    assert sizes[-2] == ("CPU", compute[0])
    assert sizes[-1] == ("CPU", tool_output_bytes(n_vocab, n_ubatch)) and n_ubatch in (256, 512, 1024)
    assert output == [sizes[-1][1]]


def _r2(d: dict[str, float]) -> dict[str, float]:
    """MiB to the two decimals of ``sched_reserve``'s line (a log may hold ``~llama_context``'s four)."""
    return {k: round(v, 2) for k, v in d.items()}


def test_without_a_cache_the_memory_does_not_follow_the_context(files: dict[str, Path]) -> None:
    """ggufx: Dream at 8,192 and 32,768 tokens of context needs the same buffers (no cache; the micro-batch, not the
    context, sizes the attention)."""
    model = ggufx.open(files["dream"])
    sizes = []
    for ctx in (8192, 32768):
        a = parse_args(f"-m x -c {ctx} -fa off")
        bd = breakdown(model, [], a.offload, a.context)
        sizes.append(sorted((b.kind, b.buft, b.bytes) for b in bd.buffers))
    assert sizes[0] == sizes[1]


def test_the_micro_batch_sizes_the_attention_scores(files: dict[str, Path]) -> None:
    """Without flash attention the scores are [n_tokens, n_tokens, heads] over the micro-batch (no cache): llama.cpp's
    compute buffer at -ub 1024 is more than twice the one at 512 (recorded), as ggufx's."""
    _, small = replay_cpu("rnd1-c8192-faoff", files["rnd1"])
    text, big = replay_cpu("rnd1-c2048-faoff-ub1024", files["rnd1"])
    comp = [sum(b.bytes for b in bd.buffers if b.kind == "compute") for bd in (small, big)]
    assert comp[1] > 2 * comp[0]
    assert_compute_equal(text, big)


NODE_RUNS = {
    "dream-c8192-faoff": "dream",
    "llada-c8192": "llada",
    "llada-moe-c8192": "llada-moe",
    "rnd1-c8192": "rnd1",
    "rnd1-c4096-faoff-np3": "rnd1",
    "llada-bias-c8192-faoff": "llada-bias",
}


test_the_graph_is_llama_cpps_node_for_node = node_for_node_test(
    NODE_RUNS,
    """The prompt-processing graph, node for node (op and size), as llama.cpp's scheduler printed it
    (GGML_SCHED_DEBUG=2, tests/fixtures/llamacpp-logs-cpu/nodes): Dream's Q/K/V biases, the Q/K head norms of
    LLaDA-MoE and RND1, the experts' weights normalized in RND1 only (SUM_ROWS, CLAMP, DIV), K and V cast to F16
    for flash attention; LLaDA's Q/K/V biases added, its output and FFN biases and rope_freqs loaded but not read.""",
)


@pytest.mark.parametrize("name", [n for n in PUBLISHED if cpu_runs(n)])
def test_the_layer_shortcut_equals_the_whole_replay(name: str, files: dict[str, Path]) -> None:
    assert_shortcut_is_whole(files[name], "-c 4096", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize(
    "r",
    [
        Refused("dream", "blk.2.ffn_gate.weight", "the graph needs tensor blk.2.ffn_gate.weight, which the file lacks"),
        Refused("llada", "output_norm.weight", "the graph needs tensor output_norm.weight, which the file lacks"),
        Refused(
            "llada-moe",
            "blk.1.attn_k_norm.weight",
            "the graph needs tensor blk.1.attn_k_norm.weight, which the file lacks",
        ),
        Refused(
            "rnd1",
            "blk.3.ffn_down_exps.weight",
            "the graph needs tensor blk.3.ffn_down_exps.weight, which the file lacks",
        ),
        Refused(
            "rnd1",
            "",
            "the graph needs 0 < expert_used_count <= expert_count <= 1024",
            add_kv=(("expert_used_count", 0),),
        ),
    ],
    ids=lambda r: f"{r.model}-{r.drop_tensor or r.add_kv[0][0]}",
)
def test_a_file_without_what_the_graph_reads_gets_the_generic_estimate(
    r: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(r, smollm2_path, tmp_path)
