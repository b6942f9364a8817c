"""A draft model (``-md``) under llama.cpp's fit: ``common_init_result`` hands ``common_fit_params`` the draft as an
extra model (common/common.cpp:1239-1266, ``common_fit_extra_model``), and every dry run of the fit adds the draft's
weights, context and compute buffers, measured with its own parameters at the target's current context and again
whenever that changes (common/fit.cpp:200-262, ``add_extra_memory``). ``llama-fit-params`` passes no extra model
(tools/fit-params/fit-params.cpp:33-36). A head that reads the target's context cannot be measured alone (its
context needs ``ctx_other``: llama-context.cpp:148-165) and fit goes on without it (fit.cpp:225-231).

Proven on the CPU build (tests/fixtures/llamacpp-logs-cpu/record_fit_drafts.py): there fit has no GPU (``nd == 0``)
and projects the host memory against the machine's total, reducing the context below ``-fitt`` MiB left free; with
``-fitt`` at the total less 1100 MiB the small qwen3 model fits alone, the same model as its own draft does not, and
both contexts are cut to 93696, as ggufx's dry runs of target and draft give by fit's interpolation."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.fit import DeviceUse, DryRun, MiB, extra_left_out, with_extra
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.render.text import fit_text
from ggufx.results.memory import fit_budget

from .graph_arch_logs import CPU_LOGS, cpu_models


@pytest.fixture(scope="module")
def files(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(("qwen3", "llama", "eagle3", "eagle3-shared", "dflash"), smollm2_path, tmp_path_factory, "fitd")


def _log(rid: str) -> str:
    return (CPU_LOGS / f"fit-{rid}.log").read_text()


def _host(model: ggufx.GGUFModel, line: str, n_ctx: int, draft: bool = False) -> int:
    """One dry run's host memory on the CPU build (its memory breakdown's Host row: weights, context, compute), as
    ggufx sizes it: the target's, or the draft's (``-md``: its own parameters)."""
    a = parse_args(line, server=True)
    cp = a.draft_context if draft and a.draft_context is not None else a.context
    off = a.draft_offload if draft and a.draft_offload is not None else a.offload
    row = breakdown(model, [], off, replace(cp, n_ctx=n_ctx)).table()["Host"]
    return row["model"] + row["context"] + row["compute"]


def test_the_cpu_builds_fit_counts_the_draft_at_the_targets_context(files: dict[str, Path]) -> None:
    alone, md = _log("alone"), _log("md")
    # the draft is measured at the target's context, then again when fit tries the smallest one
    assert re.findall(r"extra model at a context size of (\d+)", md) == ["131072", "4096"]
    assert "extra model" not in alone
    total = int(re.search(r"MemTotal: (\d+) kB", md)[1]) * 1024  # type: ignore[index]
    margin = int(re.search(r"-fitt (\d+)", md)[1]) * MiB  # type: ignore[index]
    assert f"vs. {total // MiB} MiB of total host memory" in md
    model = ggufx.open(files["qwen3"])
    line = f"llama-server -m {files['qwen3']} -md {files['qwen3']} -dev none -fit on --no-repack"
    target = {n: _host(model, line, n) for n in (131072, 4096)}
    draft = {n: _host(model, line, n, draft=True) for n in (131072, 4096)}
    # ggufx's fit adds the draft to each dry run at that run's context (one device: the host row here)
    measure = with_extra(lambda run: (DeviceUse(target[run.n_ctx], 0, 0),), lambda n: (DeviceUse(draft[n], 0, 0),))
    full, least = measure(DryRun(131072))[0].total, measure(DryRun(4096))[0].total
    assert full == target[131072] + draft[131072] and least == target[4096] + draft[4096]
    assert f"projected to use {target[131072] // MiB} MiB of host memory" in alone
    assert f"will leave {(total - target[131072]) // MiB} >= {margin // MiB} MiB of system memory, no changes" in alone
    assert f"projected to use {full // MiB} MiB of host memory" in md
    # common/fit.cpp:393-431 (nd == 0): interpolated between the smallest context and the training one
    n_ctx = 4096 + (131072 - 4096) * (total - margin - least) // (full - least)
    n_ctx -= n_ctx % 256
    assert f"context size reduced from 131072 to {n_ctx} " in md
    assert f"n_ctx_slot = {n_ctx}," in md and n_ctx == 93696


def test_a_head_that_needs_the_targets_context_is_left_out(files: dict[str, Path]) -> None:
    text = _log("eagle3")
    assert "eagle3 requires ctx_other to be set" in text
    assert "failed to measure the memory of the extra model, fitting without it" in text
    assert "context size of 8192" in text and "projected to use 132 MiB" in text  # the target's alone
    for head in ("eagle3", "eagle3-shared", "dflash"):
        why = extra_left_out(ggufx.open(files[head]), "llama-server")
        assert why is not None and "requires ctx_other" in why, head
    qwen3 = ggufx.open(files["qwen3"])
    assert extra_left_out(qwen3, "llama-server") is None and extra_left_out(qwen3, "llama-cli") is None
    assert "fits the target alone" in (extra_left_out(qwen3, "llama-fit-params") or "")


def test_mem_fit_counts_the_draft_model(files: dict[str, Path]) -> None:
    """``mem --fit`` on one GPU: the draft model's weights, cache and compute count in every dry run of llama.cpp's
    decision, which cuts the context further than for the target alone."""
    model = ggufx.open(files["qwen3"])
    alone = fit_budget(model, "1GiB", margin=100 * MiB, tool="llama-server")
    both = fit_budget(model, "1GiB", margin=100 * MiB, tool="llama-server", draft=model)
    assert "draft" not in alone
    lc, lc1 = both["llama_cpp"], alone["llama_cpp"]
    assert lc1["status"] == "unchanged" and lc["status"] == "context" and lc["n_ctx"] < lc1["n_ctx"]
    draft_at = {t["n_ctx"]: t["use"]["CUDA0"] for t in lc["trials"]}
    target_at = {t["n_ctx"]: t["use"]["CUDA0"] for t in lc1["trials"]}
    assert draft_at[131072] == 2 * target_at[131072]  # the same file as its own draft, at the same context
    d = both["draft"]
    assert d["fitted"] and d["reason"] == ""
    assert lc["use"]["CUDA0"] == 2 * d["bytes"]["CUDA0"]  # target and draft at the decided context
    assert any(n.startswith("-md ") and "beside the target" in n for n in both["notes"])
    assert "counted in these figures, fitted beside the target" in fit_text(both)
    # ggufx's own search counts the target alone, as before
    assert [f["n_ctx"] for f in both["fits"]] == [f["n_ctx"] for f in alone["fits"]]


def test_mem_fit_says_a_left_out_heads_buffers_come_on_top(files: dict[str, Path]) -> None:
    target, head = ggufx.open(files["llama"]), ggufx.open(files["eagle3"])
    a = parse_args(
        f"llama-server -m {files['llama']} -md {files['eagle3']} --spec-type draft-eagle3 -c 8192", server=True
    )
    alone = fit_budget(target, "1GiB", margin=100 * MiB, context=a.context, tool="llama-server")
    with_head = fit_budget(
        target, "1GiB", margin=100 * MiB, context=a.context, tool="llama-server", draft=head, draft_context=a.context
    )
    assert with_head["llama_cpp"]["args"] == alone["llama_cpp"]["args"]
    assert with_head["llama_cpp"]["use"] == alone["llama_cpp"]["use"]
    d = with_head["draft"]
    assert not d["fitted"] and "requires ctx_other" in d["reason"] and d["bytes"]["CUDA0"] > 0
    text = fit_text(with_head)
    assert "+ draft model" in text and "on top: not in these figures" in text
    # llama-fit-params fits the target alone whatever the draft
    qwen3 = ggufx.open(files["qwen3"])
    fp = fit_budget(qwen3, "1GiB", margin=100 * MiB, tool="llama-fit-params", draft=qwen3)
    assert not fp["draft"]["fitted"] and fp["llama_cpp"]["n_ctx"] == 131072
