"""Where recorded CUDA runs showed the scheduler placing a node elsewhere than ggufx did (the CPU runs of these
models were exact): the node, its backend and the splits llama.cpp printed (``graph: nodes = N, splits = S``).

CLEF: the decision head's lexical rows are ``ggml_get_rows(model.output, tokens)`` (clef.cpp:562). CLEF has no
``output.weight``, so ``model.output`` is the token embeddings' TENSOR_DUPLICATED copy on the output layer's buffer
type (qwen35's loader), not the input layer's host copy: with the output layer on the GPU the rows are read on
CUDA0 (GET_ROWS of Q8_0 runs there), and the graph splits 4 times (host embeddings, the backbone, the question
type's host GET_ROWS, the rest), not 6."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log

from .graph_arch_logs import backend_splits, scheduled
from .llamacpp_logs import LOGS, RUNS, devices_of


def _logged_splits(text: str) -> int:
    m = re.search(r"graph: nodes = \d+, splits = (\d+)", text)
    assert m is not None
    return int(m.group(1))


@pytest.mark.parametrize(
    ("rid", "splits"),
    [
        ("g-clef-ngl99-c32768", 4),
        ("g-clef-ngl99-c32768-faoff", 4),
        # -ngl 2 of 4 layers: layers 2, 3 and the output layer on CUDA0, the head's dec.blk.0/1 with layers 0/1 on
        # the host (each host weight the prompt's products offload opens a split: not counted here)
        ("g-clef-ngl2-c32768", None),
    ],
)
def test_clef_reads_the_lexical_rows_from_the_output_copy(
    rid: str, splits: int | None, hole_models: dict[str, Path]
) -> None:
    g, sched, text, _, _ = scheduled(rid, hole_models)
    (embd,) = [n for n in g.nodes if n.name == "embd"]
    (rows,) = [n for n in g.nodes if n.name == "lexical" and n.op == "GET_ROWS"]
    assert embd.src[0].name == rows.src[0].name == "token_embd.weight"
    assert (embd.src[0].buft, rows.src[0].buft) == ("CPU_Mapped", "CUDA0")
    assert sched.names[rows.backend] == "CUDA0"
    # the question type's rows stay on the host: token_types is an input-layer weight (llama-arch.cpp:752)
    (types,) = [n for n in g.nodes if n.name == "types"]
    assert sched.names[types.backend] == "CPU"
    if splits is not None:
        assert backend_splits(g) == _logged_splits(text) == splits


@pytest.mark.parametrize("rid", ["g-clef-ngl99-c32768", "g-clef-ngl99-c32768-np3"])
def test_clef_cuda0_compute_to_four_decimals(rid: str, hole_models: dict[str, Path]) -> None:
    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    log = parse_log(text)
    args = parse_args(run["args"].replace("@", ""))
    model = ggufx.open(hole_models[str(args.model)])
    bd = breakdown(model, devices_of(run, log.devices), args.offload, args.context)
    ours = {b.buft: b.bytes for b in bd.buffers if b.kind == "compute"}
    m = re.search(r"CUDA0 compute buffer size is +([\d.]+) MiB", text)
    assert m is not None
    assert f"{ours['CUDA0'] / MiB:.4f}" == m.group(1)


@pytest.mark.parametrize(
    ("rid", "host"),
    [
        ("srv-qwen35moe-mtp-ngl99-c131072-q8", "136.2892"),
        ("srv-qwen3next-mtp-ngl99-c32768-faoff", "74.0138"),
    ],
)
def test_the_mtp_server_main_context_reserves_its_outputs(rid: str, host: str, hole_models: dict[str, Path]) -> None:
    """llama-server under ``--spec-type draft-mtp`` gives the main context ``-np x (1 + n_max)`` = 16 outputs
    (``server_output_limits``; the log's prompt reservation: ``n_outputs = 16``), so its ``out_ids`` input holds 16
    rows: the host compute buffer is 32 bytes above the one of 4 outputs. ``mem`` applies it
    (:func:`ggufx.analysis.memory.mtp.main_context`); with it both contexts' buffers equal llama.cpp's exit lines."""
    from dataclasses import replace

    from ggufx.analysis.memory.mtp import MtpOptions, main_context, split_log

    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    assert "n_tokens =  512, n_seqs =  4, n_outputs =   16" in split_log(text)[0]
    args = parse_args(run["args"].replace("@", ""), server=True)
    model = ggufx.open(hole_models[str(args.model)])
    devices = devices_of(run, parse_log(text).devices)
    offload = replace(args.offload, mtp=True)
    theirs = re.findall(r"(\S+) compute buffer size is +([\d.]+) MiB", text)[-2:]  # the main context ends last
    assert theirs[1] == ("CUDA_Host", host)
    context = main_context(args.context, MtpOptions(args.spec_n_max, *args.spec_cache), True)
    bd = breakdown(model, devices, offload, context)
    ours = {b.buft: b.bytes for b in bd.buffers if b.kind == "compute"}
    assert {k: f"{v / MiB:.4f}" for k, v in ours.items()} == dict(theirs)
    # the 4 outputs of the plain server context: 32 bytes less on the host, below llama.cpp's figure
    bd4 = breakdown(model, devices, offload, args.context)
    host4 = next(b.bytes for b in bd4.buffers if b.kind == "compute" and b.buft == "CUDA_Host")
    assert ours["CUDA_Host"] - host4 == 32


def test_the_main_graph_writes_the_rollback_snapshots(hole_models: dict[str, Path]) -> None:
    """Under ``--spec-type draft-mtp`` the main context keeps ``n_rs_seq`` = ``--spec-draft-n-max`` (3) rollback
    snapshots of the Gated DeltaNet state: ``ggml_gated_delta_net`` writes K = 4 state slots per sequence and the
    graph copies the last min(tokens, K) of them and K views of the convolution's last columns into the cache
    (delta-net-base.cpp:497-520, 563-596). At -ngl 1 the cache is on the host, so these copies are the host's:
    llama.cpp's CUDA_Host compute buffer is 52.3966 MiB (40.1168 without the snapshots); with the cache on the GPU
    (-ngl 99) nothing moves."""
    from dataclasses import replace

    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.mtp import MtpOptions, main_context

    for rid, host in (("srv-qwen35-mtp-ngl1-c32768", "52.3966"), ("srv-qwen35-mtp-ngl99-c32768", "40.0235")):
        run = RUNS[rid]
        text = (LOGS / f"{rid}.log").read_text()
        args = parse_args(run["args"].replace("@", ""), server=True)
        model = ggufx.open(hole_models[str(args.model)])
        context = main_context(args.context, MtpOptions(args.spec_n_max, *args.spec_cache), True)
        assert context.n_rs_seq == 3 and context.n_outputs_max == 16
        devices = devices_of(run, parse_log(text).devices)
        offload = replace(args.offload, mtp=True)
        bd = breakdown(model, devices, offload, context)
        ours = {b.buft: b.bytes for b in bd.buffers if b.kind == "compute"}
        assert f"{ours['CUDA_Host'] / MiB:.4f}" == host
        assert host in text.splitlines()[-1]  # the main context's exit line, the log's last
        sp = bd.reservation
        assert sp is not None and sp.n_rs_seq == 3
        ld = graphsim._loaded(model, devices, offload)
        c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
        c.layers = list(range(ld.hp.n_layer_main))
        g = _Graph()
        g.expand(builder(ld.hp.arch)(c, g))
        (gdn,) = [n for n in g.nodes if n.name == "gdn-0" and n.op == "GATED_DELTA_NET"]
        assert gdn.ne[1] == sp.n_ubatch + gdn.src[2].ne[0] * sp.n_seq_max * 4  # T + S x n_seqs x K rows
        conv = [n for n in g.nodes if n.op == "CPY" and (n.src[0].view_src or n.src[0]).name == "conv_input-0"]
        assert len(conv) == 4  # the convolution's last columns, once per snapshot slot
