"""Session 11's group F of published-dimension models (issue 25), where they made ggufx follow llama.cpp further:
MiniMax-Text-01 as its conversion writes it (no ``full_attention_interval``: llama.cpp's default 8) and the last
prompt reservation of one sequence that llama.cpp makes for minimax-01 and kimi-linear (TAG_RESERVE_DIAG_DECAY).
Every buffer of these runs is held by tests/test_arch_logs.py; these tests say why two of them agree."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402

NAME = "minimax-text-01-456b"


@pytest.fixture(scope="module")
def minimax(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("group-f") / f"{NAME}.gguf"
    header(path, MODELS[NAME], json.loads((CPU_LOGS / "tensors.json").read_text())[NAME], smollm2_path)
    return path


def _compute(path: Path, args: str) -> float:
    parsed = parse_args("-m x " + args)
    bd = breakdown(ggufx.open(path), [], replace(parsed.offload, repack=False), parsed.context)
    return sum(b.bytes for b in bd.buffers if b.kind == "compute") / MiB


def test_minimax_01_without_the_interval_key_attends_every_eighth_layer(minimax: Path) -> None:
    """conversion/minimax.py writes no full_attention_interval; minimax-01.cpp:13-14 then takes 8: of the 8
    layers, the last one attends (llama.cpp's KV cache: layer 7 alone, 1 layer, 16 MiB at 4,096 cells)."""
    model = ggufx.open(minimax)
    assert "minimax-01.full_attention_interval" not in model.metadata
    assert [k.is_recurrent for k in layer_kinds(model)] == [True] * 7 + [False]
    log = (CPU_LOGS / f"{NAME}-c4096-norepack.log").read_text()
    assert "llama_kv_cache layers (8) -> filtered: 0-6; CPU: 7" in log
    assert "(  4096 cells,   1 layers,  1/1 seqs)" in log


def test_minimax_01_reserves_a_full_micro_batch_of_one_sequence(minimax: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With -np 3, llama.cpp reserves the prompt graph of 513 tokens over 3 sequences, then again 512 tokens of
    one sequence (llama-context.cpp:713-725): the decay input of n_seq_tokens^2 per head makes the second the
    larger (522.0159 MiB, the 4-decimal line); without it ggufx would size the first (479.5641 MiB)."""
    rid = f"{NAME}-c4096-faoff-np3-norepack"
    log = (CPU_LOGS / f"{rid}.log").read_text()
    assert "reserving a graph for ubatch with n_tokens =  512, n_seqs =  1, n_outputs =  512" in log
    assert "CPU compute buffer size is 522.0159 MiB" in log
    args = "-c 4096 -fa off -np 3"
    assert round(_compute(minimax, args), 4) == 522.0159
    monkeypatch.setattr(graphsim, "ONE_SEQUENCE_RESERVE", frozenset())
    assert round(_compute(minimax, args), 4) == 479.5641


@pytest.mark.parametrize(
    ("rid", "args"),
    [("qrwkv6-32b-c4096-norepack", "-c 4096"), ("qrwkv6-32b-c4096-faoff-np3-norepack", "-c 4096 -fa off -np 3")],
)
def test_qrwkv6_with_no_query_heads_is_built(
    rid: str, args: str, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """RWKV6Qwen2's converter writes ``head_count`` 0 ("required by llama.cpp, unused") beside its 8 KV heads: its
    layers have no attention to lay out, so the graph is built (it was refused as '0 query heads for 8 KV heads'
    and sized by the generic estimate), and the compute buffer is llama.cpp's to the 4 decimals."""
    name = "qrwkv6-32b"
    assert MODELS[name]["kv"]["attention.head_count"] == 0
    path = tmp_path_factory.mktemp("qrwkv6") / f"{name}.gguf"
    header(path, MODELS[name], json.loads((CPU_LOGS / "tensors.json").read_text())[name], smollm2_path)
    assert graphsim.simulated(ggufx.open(path)) is None
    text = (CPU_LOGS / f"{rid}.log").read_text()
    logged = float(text.split("CPU compute buffer size is")[1].split("MiB")[0])
    assert f"{_compute(path, args):.4f}" == f"{logged:.4f}"
