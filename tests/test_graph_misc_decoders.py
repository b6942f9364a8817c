"""Three older decoder families of llama.cpp 11434's list (issue 25, session 8), against llama.cpp's CPU build:

* ``chameleon`` (src/models/chameleon.cpp, graph/models/chameleon.py): RMS pre-norms, a layer norm of each Q and K
  head (with and without its biases), and after the head the image tokens' logits overwritten (a graph tensor of
  8,192 values, ``ggml_clamp`` of it, ``ggml_set_1d`` into a copy of the logits); ``chameleon-swin`` is the 30B's
  ``swin_norm`` (no pre-norms, the attention and FFN outputs normed, the FFN reading the normed attention) with
  grouped KV heads and an untied head; ``chameleon-7b`` is Chameleon-7B's published dimensions;
* ``cogvlm`` (cogvlm.cpp, graph/models/cogvlm.py): the text decoder's graph (a fused QKV and its per-head views,
  plain RoPE, no output rows, no mixed-batch embedding branch) beside the visual expert's weights, which llama.cpp
  loads (they are in every weight buffer checked here) and a text micro-batch never reads; ``cogvlm-17b`` is
  cogvlm-chat-hf's text decoder (CogVLM2-19B's multi-query QKV does not load: the loader wants 3 x n_embd rows);
* ``gptj``: llama-arch.cpp names it, but ``llama_model_mapping`` has no case for it, so llama.cpp refuses every
  GPT-J file; ggufx does not register it;
* ``gemma4-assistant`` (gemma4-assistant.cpp, graph/models/gemma4_assistant.py): Gemma 4's drafter, which only
  llama-server runs (``-md``, ``--spec-type draft-mtp``) beside its target; its layers share the target's cache,
  so its figures come from the runs of ``matrix-server`` with the small gemma4 as the target
  (``record_server.py``), its compute buffer given the target's cache types.

Per model: every buffer of every recorded run (tests/test_arch_logs.py holds the weights, KV and output buffers;
here the compute buffer to the 0.0001 MiB of ``~llama_context``'s line), the graph against the one llama.cpp's
scheduler printed, node for node; the layer shortcut against the whole replay (also grown to 33 layers); and a
file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import arch_of, builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

from . import graph_arch_logs
from .graph_arch_logs import (
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_family,
    cpu_models,
    replay_cpu,
)
from .graph_grow import assert_grown_shortcut_is_whole, grown_model
from .test_archs import SRC

SMALL = ("chameleon", "chameleon-swin", "cogvlm")
MODELS = (*SMALL, "chameleon-7b", "cogvlm-17b")
CPU_RUNS, models = cpu_family(MODELS, "misc-decoders", name="models")
NODE_RUNS = (
    "chameleon-c4096-faoff-np3",
    "chameleon-swin-c16384-q8_0",
    "cogvlm-c8192",
    "cogvlm-c16384-q8_0",
    "cogvlm-c4096-faoff-np3",
)
REFUSED = (
    Refused(
        "chameleon", "blk.2.attn_q_norm.weight", "the graph needs tensor blk.2.attn_q_norm.weight, which the file lacks"
    ),
    Refused("chameleon", "blk.0.attn_v.weight", "the graph needs tensor blk.0.attn_v.weight, which the file lacks"),
    Refused("cogvlm", "blk.1.vis_up.weight", "the graph needs tensor blk.1.vis_up.weight, which the file lacks"),
    Refused("cogvlm", "blk.3.attn_qkv.weight", "the graph needs tensor blk.3.attn_qkv.weight, which the file lacks"),
)


@pytest.mark.parametrize("name", SMALL)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache(name: str) -> None:
    assert builder_of(graph_arch_logs.cpu_spec(name)["arch"]) == graph_arch_logs.cpu_spec(name)["arch"]
    args = assert_runs_cover(name, ("-fa off -np 3", "-ctk q8_0 -ctv q8_0", "-c 8192", "--no-repack"), at_least=4)
    assert any("-ub " in a for a in args)


def test_every_model_has_runs_and_the_published_ones_two() -> None:
    assert {m for m, _ in CPU_RUNS} == set(MODELS)
    assert sum(m == "chameleon-7b" for m, _ in CPU_RUNS) == sum(m == "cogvlm-17b" for m, _ in CPU_RUNS) == 2


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(rid: str, models: dict[str, Path]) -> None:
    """chameleon: the NORM, MUL (and ADD of the bias) of each Q and K head before RoPE, the head's product then
    CLAMP and SET over the logits; with swin_norm the post-norms and the FFN of the normed attention (its residual
    ADD after the FFN's norm); cogvlm: the fused QKV's views roped, no GET_ROWS of output rows, no mixed-batch
    branch of the embeddings input (no DUP and SET_ROWS before the first layer)."""
    name = next(m for m in sorted(MODELS, key=len, reverse=True) if rid.startswith(m + "-c"))
    assert_nodes_equal(rid, models[name])


def test_the_image_logits_are_set_over_a_copy_of_the_logits(models: dict[str, Path]) -> None:
    """chameleon.cpp ends in ggml_set_1d (not in place): the head's product and its copy are both live at the
    end, beside the 8,192-value tensor of the image logits and its clamp: with flash attention and 512 tokens of
    a 16,384-token vocabulary that end is the buffer's peak, two 32 MiB logits plus 2 x 32 KiB."""
    text, bd = replay_cpu("chameleon-c8192", models["chameleon"])
    assert_compute_equal(text, bd)
    (cpu,) = [b.bytes for b in bd.buffers if b.kind == "compute"]
    logits = 16384 * 512 * 4
    assert cpu >= 2 * logits + 2 * 8192 * 4
    text, bd = replay_cpu("cogvlm-c8192", models["cogvlm"])  # one 16 MiB logits (8,192 tokens), no copy
    (cog,) = [b.bytes for b in bd.buffers if b.kind == "compute"]
    assert cog < 2 * 8192 * 512 * 4


@pytest.mark.parametrize("name", SMALL)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("name", SMALL)
def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(name: str, smollm2_path: Path, tmp_path: Path) -> None:
    """The model grown to 33 layers: the shortened replay, where it is taken, allocates as the whole one, on the
    CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model(name, 33, 1, tmp_path, smollm2_path))


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)


def test_a_chameleon_head_narrower_than_the_image_tokens_is_not_built(smollm2_path: Path, tmp_path: Path) -> None:
    """ggml_set_1d writes 8,192 values from the fifth logit on: with a head of 8,192 rows llama.cpp's CPU build
    sizes every buffer, then aborts on the first token (ggml-cpu/ops.cpp:5041: the set runs past the one output's
    logits), so the file gets the generic estimate with the reason."""
    path = grown_vocab(smollm2_path, tmp_path, 8192)
    reason = graphsim.unbuildable(ggufx.open(path))
    assert (
        reason
        == "the chameleon graph needs at least 8196 logits per token (the image tokens' are set), the head has 8192"
    )


def grown_vocab(smollm2: Path, out: Path, n_vocab: int) -> Path:
    """The small chameleon model with ``n_vocab`` tokens (its embeddings resized)."""
    import json
    import sys

    sys.path.insert(0, str(graph_arch_logs.CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(graph_arch_logs.CPU_LOGS))
    spec = json.loads(json.dumps(graph_arch_logs.cpu_spec("chameleon")))
    spec["kv"]["vocab_size"] = spec["n_vocab"] = n_vocab
    tensors = json.loads((graph_arch_logs.CPU_LOGS / "tensors.json").read_text())["chameleon"]
    tensors = [[n, [ne[0], n_vocab] if n == "token_embd.weight" else ne, t] for n, ne, t in tensors]
    path = out / "chameleon-narrow.gguf"
    header(path, spec, tensors, smollm2)
    return path


def test_cogvlm_visual_expert_weights_are_loaded_but_not_in_the_text_graph(models: dict[str, Path]) -> None:
    """The visual expert's 5 tensors per layer are counted in the weights (tests/test_arch_logs.py holds the
    buffers to llama.cpp's 0.01 MiB) while the graph, built from the language weights alone, is llama.cpp's
    (the node dumps and compute buffers above)."""
    model = ggufx.open(models["cogvlm"])
    vis = [t for t in model.tensors if ".vis_" in t.name]
    assert len(vis) == 5 * 4
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    weights = sum(b.bytes for b in bd.buffers if b.kind == "model")
    assert weights >= sum(t.nbytes for t in model.tensors)
    assert bd.compute_estimate is None


def test_gptj_is_not_registered_llama_cpp_has_no_loader_for_it() -> None:
    """llama-arch.cpp names gptj but llama_model_mapping (llama-model.cpp) has no case for it: the only named
    architecture llama.cpp 11434 cannot create, so no registry entry (the generic estimate, labelled)."""
    if not (SRC / "src" / "llama-model.cpp").is_file():
        pytest.skip(f"llama.cpp's source is not at {SRC}")
    text = (SRC / "src" / "llama-model.cpp").read_text()
    mapping = re.search(r"static llama_model \* llama_model_mapping.*?\n}\n", text, re.S)
    assert mapping is not None
    names = dict(re.findall(r'\{\s*(LLM_ARCH_\w+),\s*"([^"]+)"\s*\}', (SRC / "src" / "llama-arch.cpp").read_text()))
    cases = set(re.findall(r"case (LLM_ARCH_\w+):", mapping.group(0)))
    assert {names[e] for e in names if e not in cases} == {"gptj", "(unknown)"}
    assert arch_of("gptj") is None and arch_of("chameleon") is not None and arch_of("cogvlm") is not None


@pytest.mark.llamacpp
def test_llama_cpp_refuses_a_gptj_file(llama_bin: Path, smollm2_path: Path, tmp_path: Path) -> None:
    """The header-only GPT-J of models.py (GPT-J's keys at small dimensions): llama-completion stops at the
    architecture, before any tensor."""
    path = tmp_path / "gptj.gguf"
    spec = graph_arch_logs.cpu_spec("gptj")
    import sys

    sys.path.insert(0, str(graph_arch_logs.CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(graph_arch_logs.CPU_LOGS))
    header(path, spec, [["token_embd.weight", [1024, 8192], "Q8_0"]], smollm2_path)
    cmd = [str(llama_bin / "llama-completion"), "-m", str(path), "-dev", "none", "-c", "256", "-n", "0", "-p", "hi"]
    for _ in range(20):  # llama.cpp's log worker may lose the last lines when it exits (discover.py asks again)
        p = subprocess.run([*cmd, "-no-cnv", "-fit", "off"], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        if "failed to load model" in p.stdout + p.stderr:
            break
    assert "error loading model: unsupported model architecture: 'gptj'" in p.stdout + p.stderr


def test_the_published_shapes_are_built_from_their_own_files(models: dict[str, Path]) -> None:
    """Chameleon-7B's and cogvlm-chat-hf's dimensions (32 layers of 4096, 32 heads of 128): built, not refused."""
    for name, vocab in (("chameleon-7b", 65536), ("cogvlm-17b", 32000)):
        model = ggufx.open(models[name])
        assert graphsim.unbuildable(model) is None
        assert model.metadata.get_int(f"{model.architecture}.block_count") == 32
        head = next(t for t in model.tensors if t.name == "output.weight")
        assert head.shape[1] == vocab


# -- gemma4-assistant: Gemma 4's drafter over the target's cache (llama-server -md, --spec-type draft-mtp) ----------

SERVER_RUNS = [
    tuple(line.split("\t"))
    for line in (graph_arch_logs.CPU_LOGS / "matrix-server").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
ASSISTANT_NODE_RUNS = (
    "srv-gemma4-assistant-c8192",
    "srv-gemma4-assistant-c8192-faoff",
    "srv-gemma4-assistant-c16384-q8_0",
    "srv-gemma4-assistant-c4096-faoff-np3",
)


@pytest.fixture(scope="module")
def pair(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(("gemma4", "gemma4-assistant"), smollm2_path, tmp_path_factory, "gemma4-pair")


def _drafter(rid: str, pair: dict[str, Path], target_types: bool = True):  # type: ignore[no-untyped-def]
    """The drafter's breakdown for a recorded server run, and the run's log after ``loading draft model``.
    ``target_types``: its context has the target's cache types (the shared cache's: llama_kv_cache takes
    ``n_rot_k``/``n_rot_v`` from the cache it shares, llama-kv-cache.cpp:307-313), as the drafter's compute
    needs; without, the drafter's own ``-ctkd``/``-ctvd`` (f16)."""
    from dataclasses import replace

    _, target, drafter, args = next(r for r in SERVER_RUNS if r[0] == rid)
    a = parse_args(f"llama-server -m {pair[target]} -md {pair[drafter]} {args} -dev none -fit off")
    assert a.draft_context is not None and a.context.n_outputs_max == a.context.n_parallel
    cp = a.draft_context
    if target_types:
        cp = replace(cp, cache_type_k=a.context.cache_type_k, cache_type_v=a.context.cache_type_v)
    offload = replace(a.draft_offload or a.offload, repack="--no-repack" not in args)
    bd = breakdown(ggufx.open(pair[drafter]), [], offload, cp)
    text = (graph_arch_logs.CPU_LOGS / f"{rid}.log").read_text()
    return bd, text[text.index("loading draft model") :]


def test_the_server_runs_cover_flash_attention_off_sequences_a_quantized_cache_and_swa_full() -> None:
    assert builder_of("gemma4-assistant") == "gemma4_assistant"
    args = " ".join(r[3] for r in SERVER_RUNS)
    assert len(SERVER_RUNS) >= 6 and all((graph_arch_logs.CPU_LOGS / f"{r[0]}.log").exists() for r in SERVER_RUNS)
    for option in ("-fa off", "-np 1", "-np 3", "-ctk q8_0 -ctv q8_0", "--swa-full", "-ub 256", "--no-repack"):
        assert option in args, option


@pytest.mark.parametrize("rid", [r[0] for r in SERVER_RUNS])
def test_the_drafter_compute_buffer_equals_llama_cpp(rid: str, pair: dict[str, Path]) -> None:
    """The drafter's compute buffer to the four decimals of its ``~llama_context`` line (the first at exit: the
    draft context is destroyed first), its mapped weights and output buffer to llama.cpp's 0.01 MiB, and no KV
    buffer: llama.cpp prints none for it, each of its layers shares a target cache layer."""
    bd, draft = _drafter(rid, pair)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert not compute.reason and bd.compute_estimate is None
    exit_lines = re.findall(r"~llama_context:\s+CPU compute buffer size is\s+([\d.]+) MiB", draft)
    assert len(exit_lines) == 2  # the drafter's, then the target's
    assert round(compute.bytes / (1 << 20), 4) == float(exit_lines[0])
    assert not [b for b in bd.buffers if b.kind == "kv"] and "KV buffer size" not in draft
    # the target (8 layers) shares its layer 6 (n_layer - 2) with the drafter's window layers, 7 with its full one
    assert re.search(r"sharing with layer 6\. k = \S+ v = \S+: 0-2", draft)
    assert re.search(r"sharing with layer 7\. k = \S+ v = \S+: 3", draft)
    mapped = re.search(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB", draft)
    output = re.search(r"CPU  output buffer size =\s+([\d.]+) MiB", draft)
    assert mapped and output
    assert round(sum(b.bytes for b in bd.buffers if b.buft == "CPU_Mapped") / (1 << 20), 2) == float(mapped[1])
    assert round(sum(b.bytes for b in bd.buffers if b.kind == "output") / (1 << 20), 2) == float(output[1])


def test_a_quantized_target_cache_rotates_the_drafter_queries(pair: dict[str, Path]) -> None:
    """With the target's q8_0 cache the drafter's Q and attention output get the Hadamard rotations of the cache it
    shares, whatever its own -ctkd (f16 here, as the log's spec line says): with its own types the figure misses
    llama.cpp's by the rotations."""
    rid = "srv-gemma4-assistant-c16384-q8_0"
    bd, draft = _drafter(rid, pair)
    assert "cache_k=f16, cache_v=f16" in draft
    theirs = float(re.findall(r"compute buffer size is\s+([\d.]+) MiB", draft)[0])
    mine = [b.bytes for b in bd.buffers if b.kind == "compute"][0] / (1 << 20)
    bd_own, _ = _drafter(rid, pair, target_types=False)
    own = [b.bytes for b in bd_own.buffers if b.kind == "compute"][0] / (1 << 20)
    assert round(mine, 4) == theirs and round(own, 4) < theirs


@pytest.mark.parametrize("rid", ASSISTANT_NODE_RUNS)
def test_the_drafter_graph_is_llama_cpps_node_for_node(rid: str, pair: dict[str, Path]) -> None:
    """The target's token rows, scaled and concatenated with the hidden state, the pre-projection; per layer Q only
    (its norm, RoPE) over the shared cache, no SET_ROWS; the output rows in the last layer; logits and h_nextn."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    bd, _ = _drafter(rid, pair)
    sp = bd.reservation
    assert sp is not None
    model = ggufx.open(pair["gemma4-assistant"])
    _, _, _, args = next(r for r in SERVER_RUNS if r[0] == rid)
    ld = graphsim._loaded(model, [], parse_args(f"llama-server -m x {args}").offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder("gemma4-assistant")(c, g))
    views = graph_arch_logs._VIEWS
    mine = [(n.op, graph_arch_logs._fmt_size(n.nbytes)) for n in g.nodes if n.op not in views]
    theirs = []
    for line in (graph_arch_logs.NODES / f"{rid}.tsv").read_text().splitlines():
        if not line.startswith("#"):
            _, op, _, size = line.split("\t")
            if op not in views:
                theirs.append((graph_arch_logs._OP.get(op, op), size))
    assert "SET_ROWS" not in {op for op, _ in theirs}
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a[0].startswith(b[0][:10]) and a[1] == b[1], (i, a, b)


ASSISTANT_REFUSED = (
    Refused(
        "gemma4-assistant",
        "nextn.pre_projection.weight",
        "the graph needs tensor nextn.pre_projection.weight, which the file lacks",
    ),
    Refused(
        "gemma4-assistant",
        "blk.3.layer_output_scale.weight",
        "the graph needs tensor blk.3.layer_output_scale.weight, which the file lacks",
    ),
    Refused(
        "gemma4-assistant",
        "",
        "the gemma4-assistant graph needs nextn_predict_layers = block_count (every layer a drafter layer)",
        add_kv=(("nextn_predict_layers", 2),),
    ),
    Refused(
        "gemma4-assistant",
        "",
        "the gemma4-assistant graph needs embedding_length_out, the target's width, which llama.cpp requires",
        drop_key="embedding_length_out",
    ),
)


@pytest.mark.parametrize("refused", ASSISTANT_REFUSED, ids=lambda r: r.drop_tensor or r.drop_key or "nextn")
def test_a_drafter_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)


def test_a_cogvlm_with_grouped_kv_heads_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    """cogvlm.cpp's loader wants a QKV of 3 x n_embd rows: a multi-query projection (CogVLM2's, hidden plus two
    8-head K/V parts; here 1024 + 2 x 2 x 128) is refused by llama.cpp ("wrong shape"), and by the builder."""
    path = _cogvlm_gqa(smollm2_path, tmp_path)
    reason = graphsim.unbuildable(ggufx.open(path))
    assert reason == (
        "the cogvlm graph needs blk.0.attn_qkv.weight 3072 wide (3 x heads x head size), llama.cpp's loader refuses it"
    )


@pytest.mark.llamacpp
def test_llama_cpp_refuses_a_cogvlm_with_grouped_kv_heads(llama_bin: Path, smollm2_path: Path, tmp_path: Path) -> None:
    path = _cogvlm_gqa(smollm2_path, tmp_path)
    cmd = [str(llama_bin / "llama-completion"), "-m", str(path), "-dev", "none", "-c", "256", "-n", "0", "-p", "hi"]
    for _ in range(20):  # llama.cpp's log worker may lose the last lines when it exits
        p = subprocess.run([*cmd, "-no-cnv", "-fit", "off"], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        if "wrong shape" in p.stdout + p.stderr:
            break
    assert re.search(r"tensor 'blk\.0\.attn_qkv\.weight' has wrong shape; expected\s+1024,\s+3072", p.stdout + p.stderr)


def _cogvlm_gqa(smollm2: Path, out: Path) -> Path:
    import json
    import sys

    sys.path.insert(0, str(graph_arch_logs.CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(graph_arch_logs.CPU_LOGS))
    tensors = json.loads((graph_arch_logs.CPU_LOGS / "tensors.json").read_text())["cogvlm"]
    tensors = [[n, [1024, 1536], "F16"] if n.endswith("attn_qkv.weight") else [n, ne, t] for n, ne, t in tensors]
    path = out / "cogvlm-gqa.gguf"
    header(path, graph_arch_logs.cpu_spec("cogvlm"), tensors, smollm2)
    return path
