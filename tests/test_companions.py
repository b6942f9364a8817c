"""Companion files (issue #17): what a file is (`info`'s `kind` and `companion`), `ggufx imatrix`,
and `check --mmproj/--draft/--lora/--imatrix` (and `[companions]` in a policy), on small files
written with gguf-py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter

import ggufx
from ggufx import results
from ggufx.analysis.companions import imatrix_coverage, lora_incompatibility
from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.memory.llamalog import parse_log
from tests.support import CliRun

from . import companion_files as cf

ATTN_Q = "blk.0.attn_q.weight"
FFN_UP = "blk.1.ffn_up.weight"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return cf.write_base(tmp_path / "base.gguf", f16=frozenset({"blk.1.attn_q.weight", "blk.0.ffn_down.weight"}))


# -- kind and companion summary ------------------------------------------------------------------


def test_kind_of_each_file(tmp_path: Path, base: Path) -> None:
    files = {
        "model": base,
        "projector": cf.write_projector(tmp_path / "mmproj.gguf", projection_dim=64, audio=True),
        "adapter": cf.write_lora(tmp_path / "lora.gguf", {ATTN_Q: (64, 64), FFN_UP: (64, 128)}, rank=4, alpha=8.0),
        "imatrix": cf.write_imatrix(tmp_path / "imatrix.gguf", {ATTN_Q: ([1.0] * 64, 4.0)}, chunks=3, chunk_size=64),
        "vocab": cf.write_vocab(tmp_path / "vocab.gguf"),
        "control-vector": cf.write_control_vector(tmp_path / "cv.gguf", layers=3),
    }
    got = {kind: ggufx.info(str(p)).to_dict() for kind, p in files.items()}
    assert {k: v["kind"] for k, v in got.items()} == {k: k for k in files}
    assert got["model"]["companion"] is None
    proj = got["projector"]["companion"]
    assert (proj["projector_type"], proj["has_vision_encoder"], proj["has_audio_encoder"]) == ("gemma3", True, True)
    assert {k: proj["vision"][k] for k in ("image_size", "patch_size", "projection_dim", "block_count")} == {
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 64,
        "block_count": 3,
    }
    assert (proj["audio"]["block_count"], proj["audio"]["num_mel_bins"]) == (2, 128)
    lora = got["adapter"]["companion"]
    assert (lora["adapter_type"], lora["alpha"], lora["rank"], lora["tensors"], lora["layers"]) == (
        "lora",
        8.0,
        4,
        2,
        [0, 1],
    )
    assert lora["base_tensors"] == [ATTN_Q, FFN_UP]
    im = got["imatrix"]["companion"]
    assert im == {"datasets": ["prose.txt"], "chunk_count": 3, "chunk_size": 64, "tensors": 1}
    assert got["imatrix"]["architecture"] is None
    assert got["vocab"]["companion"] == {"tokenizer_model": "gpt2", "tokenizer_pre": None, "tokens": 4}
    assert got["control-vector"]["companion"] == {"model_hint": "llama", "layer_count": 3, "layers": [1, 2, 3]}


def test_info_text_and_json_show_kind(cli: CliRun, tmp_path: Path) -> None:
    lora = cf.write_lora(tmp_path / "lora.gguf", {ATTN_Q: (64, 64)}, rank=8, alpha=16.0)
    r = cli("info", str(lora))
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert "kind              adapter" in lines
    assert any(ln.startswith("adapter") and "lora, alpha 16.0, rank 8" in ln for ln in lines)
    assert any(ln.startswith("adapted tensors") and "1 in layers 0-0 (1)" in ln for ln in lines)
    j = json.loads(cli("info", "--json", str(lora)).stdout)
    assert j["kind"] == "adapter" and j["companion"]["rank"] == 8


def test_model_text_has_no_kind_line(cli: CliRun, base: Path) -> None:
    r = cli("info", str(base))
    assert not any(ln.startswith("kind ") for ln in r.stdout.splitlines())
    assert json.loads(cli("info", "--json", str(base)).stdout)["kind"] == "model"


def test_roles_and_layers_of_companions(cli: CliRun, tmp_path: Path) -> None:
    """An adapter's and an imatrix's roles are the model roles they touch, with the factor or the
    statistic they hold; their grids are the model layers they cover; a control vector's rows are
    its directions' layers."""
    lora = cf.write_lora(tmp_path / "lora.gguf", {ATTN_Q: (64, 64), FFN_UP: (64, 128)}, rank=4)
    im = cf.write_imatrix(tmp_path / "im.gguf", {ATTN_Q: ([1.0] * 64, 4.0), "blk.2.ffn_up.weight": ([1.0] * 64, 4.0)})
    cv = cf.write_control_vector(tmp_path / "cv.gguf", layers=3)
    roles = json.loads(cli("roles", "--json", str(lora)).stdout)
    assert roles["kind"] == "adapter"
    assert sorted(r["role"] for r in roles["roles"]) == [
        "attn_q.lora_a",
        "attn_q.lora_b",
        "ffn_up.lora_a",
        "ffn_up.lora_b",
    ]
    grid = json.loads(cli("layers", "--json", str(lora)).stdout)
    assert grid["roles"] == ["attn_q.lora_a", "attn_q.lora_b", "ffn_up.lora_a", "ffn_up.lora_b"]
    assert [(r["first"], r["kind"], r["types"]) for r in grid["layers"]] == [
        (0, "LoRA", {"attn_q.lora_a": "F32", "attn_q.lora_b": "F32", "ffn_up.lora_a": "", "ffn_up.lora_b": ""}),
        (1, "LoRA", {"attn_q.lora_a": "", "attn_q.lora_b": "", "ffn_up.lora_a": "F32", "ffn_up.lora_b": "F32"}),
    ]
    text = cli("layers", str(lora)).stdout
    assert text.rstrip().endswith("2 layers in this adapter file: 2 LoRA")
    assert {r["role"] for r in json.loads(cli("roles", "--json", str(im)).stdout)["roles"]} == {
        "attn_q.in_sum2",
        "attn_q.counts",
        "ffn_up.in_sum2",
        "ffn_up.counts",
    }
    ig = json.loads(cli("layers", "--json", str(im)).stdout)
    assert (ig["kind"], ig["roles"], ig["layer_kinds"]) == ("imatrix", ["attn_q", "ffn_up"], {"imatrix entries": 2})
    assert [(r["first"], r["types"]) for r in ig["layers"]] == [
        (0, {"attn_q": "F32", "ffn_up": ""}),
        (2, {"attn_q": "", "ffn_up": "F32"}),
    ]
    cg = json.loads(cli("layers", "--json", str(cv)).stdout)
    assert [(r["first"], r["last"], r["kind"]) for r in cg["layers"]] == [(1, 3, "control vector")]
    for command in ("tensors", "meta"):
        assert json.loads(cli(command, "--json", str(im)).stdout)["kind"] == "imatrix"


def test_projector_memory_in_info_is_what_llama_cpp_printed(cli: CliRun, hole_models: dict[str, Path]) -> None:
    """info's projector memory: the weights and warmup compute buffers llama-mtmd-cli printed for
    the Qwen3.6 27B projector on an H100 (q27-mmproj-c32768) and with --no-mmproj-offload."""
    from .llamacpp_logs import LOGS

    gpu = parse_log((LOGS / "q27-mmproj-c32768.log").read_text()).projector
    cpu = parse_log((LOGS / "q27-mmproj-cpu-c32768.log").read_text()).projector
    mem = json.loads(cli("info", "--json", str(hole_models["mmproj-qwen36-27b"])).stdout)["companion"]["memory"]
    mib = {k: round(v / MiB, 2) for k, v in mem.items() if isinstance(v, int)}
    assert mib == {
        "weights_bytes": gpu["weights"],
        "gpu_compute_bytes": gpu["CUDA0"],
        "host_compute_bytes": gpu["CPU"],
        "cpu_compute_bytes": cpu["CPU"],
    }
    assert mem["compute_not_modelled"] is None
    text = cli("info", str(hole_models["mmproj-qwen36-27b"])).stdout
    assert "weights 884.62 MiB; compute 248.10 MiB on the GPU + 24.93 MiB host, 248.10 MiB without GPU" in text


def test_projector_with_missing_hyperparameters_says_why(cli: CliRun, tmp_path: Path) -> None:
    mm = cf.write_projector(tmp_path / "mmproj.gguf")  # no feed_forward_length: no graph to size
    mem = json.loads(cli("info", "--json", str(mm)).stdout)["companion"]["memory"]
    assert mem["weights_bytes"] == 83456 and mem["gpu_compute_bytes"] is None
    assert mem["compute_not_modelled"] == f"{mm}: projector key clip.vision.feed_forward_length is missing"
    r = cli("mem", str(cf.write_base(tmp_path / "base.gguf")), "--mmproj", str(mm))
    assert r.exit_code == 2 and "projector key clip.vision.feed_forward_length is missing" in r.stderr


def test_projector_towers_and_report(cli: CliRun, hole_models: dict[str, Path], tmp_path: Path) -> None:
    """The Qwen3.6 27B projector: its 27 vision blocks are its layers; the report describes the
    projector instead of a language model's memory and chat template."""
    mm = str(hole_models["mmproj-qwen36-27b"])
    grid = json.loads(cli("layers", "--json", mm).stdout)
    assert grid["kind"] == "projector"
    assert grid["layer_kinds"] == {"vision encoder": 27}
    assert [(r["first"], r["last"]) for r in grid["layers"]] == [(0, 26)]
    assert {"attn_qkv", "attn_out", "ffn_up", "ffn_down"} <= set(grid["roles"])
    roles = {r["role"]: r for r in json.loads(cli("roles", "--json", mm).stdout)["roles"]}
    assert roles["v.ffn_up"]["layers"] == 27 and roles["v.ffn_up"]["types"] == {"F16": 27}
    rep = json.loads(cli("report", "--json", mm).stdout)
    assert (rep["kind"], rep["memory"], rep["chat_template"]) == ("projector", [], None)
    assert rep["companion"]["vision"]["projection_dim"] == 5120
    md = cli("report", "--format", "md", mm).stdout
    assert "## Multimodal projector" in md and "| vision projection dim | 5,120 |" in md
    assert "## Memory" not in md and "## Chat template" not in md
    html = tmp_path / "mm.html"
    assert cli("report", mm, "-o", str(html)).exit_code == 0
    page = html.read_text()
    assert '<table class="facts" id="companion">' in page and "<h2>Memory</h2>" not in page


# -- ggufx imatrix -------------------------------------------------------------------------------


def _imatrix(tmp_path: Path) -> Path:
    # attn_q: layer 0 mean 0.5 (2/4), layer 1 mean 1.5 (6/4); ffn_down: layer 0 3.0, layer 1 1.0
    vals = {
        "blk.0.attn_q.weight": ([2.0] * 64, 4.0),
        "blk.1.attn_q.weight": ([6.0] * 64, 4.0),
        "blk.0.ffn_down.weight": ([3.0] * 128, 1.0),
        "blk.1.ffn_down.weight": ([1.0] * 128, 1.0),
    }
    return cf.write_imatrix(tmp_path / "imatrix.gguf", vals)


def test_imatrix_importance_and_rank(tmp_path: Path) -> None:
    res = results.imatrix(ggufx.open(str(_imatrix(tmp_path))))
    rows = {t["name"]: t for t in res["tensors"]}
    assert res["count"] == 4 and res["model"] is None
    assert rows["blk.0.attn_q.weight"]["importance"] == 0.5
    assert rows["blk.0.attn_q.weight"]["sum_sq"] == 32.0
    assert rows["blk.1.attn_q.weight"]["importance"] == 1.5
    assert rows["blk.0.ffn_down.weight"]["importance"] == 3.0
    assert {n: (r["rank"], r["role_count"], r["top_quartile"]) for n, r in rows.items()} == {
        "blk.0.attn_q.weight": (2, 2, False),
        "blk.1.attn_q.weight": (1, 2, True),
        "blk.0.ffn_down.weight": (1, 2, True),
        "blk.1.ffn_down.weight": (2, 2, False),
    }
    assert rows["blk.0.attn_q.weight"]["elements"] == 64 and rows["blk.0.attn_q.weight"]["counts"] == 4


def test_imatrix_against_a_quant(cli: CliRun, tmp_path: Path, base: Path) -> None:
    # base: blk.1.attn_q (top of attn_q) and blk.0.ffn_down (top of ffn_down) are F16, the rest F32
    res = results.imatrix(ggufx.open(str(_imatrix(tmp_path))), ggufx.open(str(base)))
    assert res["most_common_type"] == {"attn_q": "F16", "ffn_down": "F16"}  # 1:1, ties by name: F16 < F32
    assert {t["name"]: t["type"] for t in res["tensors"]}["blk.0.attn_q.weight"] == "F32"
    assert res["high_at_common_type"] == ["blk.1.attn_q.weight", "blk.0.ffn_down.weight"]
    assert res["low_not_at_common_type"] == ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"]
    r = cli("imatrix", str(tmp_path / "imatrix.gguf"), "--model", str(base))
    assert r.exit_code == 0
    assert "2 tensor(s) top quartile of their role but left at its most common type" in r.stdout
    j = json.loads(cli("imatrix", str(tmp_path / "imatrix.gguf"), "--json").stdout)
    assert [t["rank"] for t in j["tensors"]] == [2, 1, 1, 2]


def test_imatrix_refuses_other_files(cli: CliRun, tmp_path: Path, base: Path) -> None:
    r = cli("imatrix", str(base))
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"ggufx: error: {base}: not an imatrix: the file's kind is model (general.type absent, not 'imatrix')"
    ]


def test_imatrix_hostile_tensors(cli: CliRun, tmp_path: Path) -> None:
    w = GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    w.add_string("general.type", "imatrix")
    w.add_tensor("x.weight.in_sum2", np.zeros((1, 5), np.float32))
    w.add_tensor("x.weight.counts", np.zeros((2, 1), np.float32))  # 5 values for 2 matrices
    w.add_tensor("y.weight.in_sum2", np.zeros((1, 4), np.float16))
    w.add_tensor("y.weight.counts", np.zeros((1, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("imatrix", str(tmp_path / "bad.gguf"))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "tensor 'x.weight.in_sum2' has 5 values for 2 counts (not a multiple)" in r.stderr


# -- check: companion rules ----------------------------------------------------------------------


def _lora_reason(base: Path, lora: Path) -> str | None:
    return lora_incompatibility(ggufx.open(str(base)), ggufx.open(str(lora)))


def test_lora_rules(tmp_path: Path, base: Path) -> None:
    ok = cf.write_lora(tmp_path / "ok.gguf", {ATTN_Q: (64, 64), FFN_UP: (64, 128), "blk.0.ffn_down.weight": (128, 64)})
    assert _lora_reason(base, ok) is None
    shape = cf.write_lora(tmp_path / "shape.gguf", {FFN_UP: (64, 64)})
    assert _lora_reason(base, shape) == (
        f"'{FFN_UP}' is 64 x 128 but its lora_a is 64 x 4 and lora_b 4 x 64 (expected lora_a [64, r], lora_b [r, 128])"
    )
    missing = cf.write_lora(tmp_path / "missing.gguf", {"blk.7.attn_q.weight": (64, 64)})
    assert _lora_reason(base, missing) == "'blk.7.attn_q.weight' is adapted but the model has no tensor of that name"
    arch = cf.write_lora(tmp_path / "arch.gguf", {ATTN_Q: (64, 64)}, arch="qwen2")
    assert _lora_reason(base, arch) == "the adapter is for architecture 'qwen2', the model is 'llama'"
    kind = cf.write_lora(tmp_path / "kind.gguf", {ATTN_Q: (64, 64)}, adapter_type="alora2")
    assert _lora_reason(base, kind) == "adapter.type is 'alora2', llama.cpp loads only 'lora'"
    proj = cf.write_projector(tmp_path / "mmproj.gguf")
    assert "is not an adapter (general.type is None, not 'adapter'; its kind is projector)" in str(
        _lora_reason(base, proj)
    )


def test_imatrix_coverage(tmp_path: Path, base: Path) -> None:
    model = ggufx.open(str(base))
    weights = [
        t for t in model.tensors if t.name.endswith(".weight") and len(t.shape) == 2 and t.name != "token_embd.weight"
    ]
    full = {t.name: ([1.0] * t.shape[0], 1.0) for t in weights}
    assert imatrix_coverage(model, ggufx.open(str(cf.write_imatrix(tmp_path / "full.gguf", full)))) is None
    part = dict(full)
    del part[FFN_UP]
    reason = imatrix_coverage(model, ggufx.open(str(cf.write_imatrix(tmp_path / "part.gguf", part))))
    assert reason == f"1 quantizable tensor(s) have no importance data: {FFN_UP}"
    wrong = dict(full)
    wrong[FFN_UP] = ([1.0] * 32, 1.0)
    reason = imatrix_coverage(model, ggufx.open(str(cf.write_imatrix(tmp_path / "wrong.gguf", wrong))))
    assert reason == f"1 tensor(s) have importance data of the wrong size: {FFN_UP} (imatrix size 32, tensor size 64)"


def test_check_options_exit_codes(cli: CliRun, tmp_path: Path, base: Path) -> None:
    good = cf.write_lora(tmp_path / "good.gguf", {ATTN_Q: (64, 64)})
    bad_proj = cf.write_projector(tmp_path / "mmproj.gguf", projection_dim=4096)
    r = cli("check", str(base), "--lora", str(good))
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout and "companions.lora" in r.stdout
    r = cli("check", str(base), "--lora", str(good), "--mmproj", str(bad_proj), "--json")
    assert r.exit_code == 1
    res = {x["rule"]: x for x in json.loads(r.stdout)["files"][0]["results"]}
    assert res["companions.lora"]["passed"] is True
    assert res["companions.mmproj"] == {
        "rule": "companions.mmproj",
        "passed": False,
        "reason": f"{bad_proj}: the projector projects to 4096 but the model's embedding is 64",
    }
    r = cli("check", str(base), "--imatrix", str(tmp_path / "absent.gguf"))
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"ggufx: error: {tmp_path / 'absent.gguf'}: no such file"]
    r = cli("check", str(base))
    assert r.exit_code == 2 and "give --policy, or a companion file" in r.output


def test_policy_companions_relative_to_policy(cli: CliRun, tmp_path: Path, base: Path) -> None:
    (tmp_path / "adapters").mkdir()
    cf.write_lora(tmp_path / "adapters" / "bad.gguf", {FFN_UP: (64, 64)})
    pol = tmp_path / "conf" / "policy.toml"
    pol.parent.mkdir()
    pol.write_text('[companions]\nlora = "../adapters/bad.gguf"\n')
    r = cli("check", str(base), "--policy", str(pol))
    assert r.exit_code == 1
    assert f"companions.lora: {pol.parent}/../adapters/bad.gguf: '{FFN_UP}' is 64 x 128" in r.stdout
    pol.write_text('[companions]\nlora = "../adapters/bad.gguf"\nvae = "x.gguf"\n')
    r = cli("check", str(base), "--policy", str(pol))
    assert r.exit_code == 2
    assert "line 3: unknown key 'vae' in [companions] (known: control_vector, draft, imatrix, lora, mmproj)" in r.stderr


def test_check_draft_on_real_models(cli: CliRun, smollm2_path: Path, gemma_path: Path) -> None:
    r = cli("check", str(smollm2_path), "--draft", str(smollm2_path))
    assert r.exit_code == 0, r.output
    assert "companions.draft" in r.stdout and "llama.cpp accepts it as the draft model" in r.stdout
    r = cli("check", str(smollm2_path), "--draft", str(gemma_path), "--json")
    assert r.exit_code == 1
    (res,) = json.loads(r.stdout)["files"][0]["results"]
    assert res["rule"] == "companions.draft" and not res["passed"]
    assert res["reason"] == f"{gemma_path}: the draft model's vocabulary type is 'llama', the model's 'gpt2'"


def test_non_finite_and_odd_shapes_are_handled(cli: CliRun, tmp_path: Path, base: Path) -> None:
    # llama-imatrix skips matrices whose count is not positive and values that are not finite
    w = GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    w.add_string("general.type", "imatrix")
    w.add_tensor("a.weight.in_sum2", np.array([[1.0, np.inf, 3.0], [5.0, 5.0, 5.0]], np.float32))
    w.add_tensor("a.weight.counts", np.array([[1.0], [np.nan]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (row,) = results.imatrix(ggufx.open(str(tmp_path / "odd.gguf")))["tensors"]
    assert (row["sum_sq"], row["elements"], row["importance"], row["counts"]) == (4.0, 2, 2.0, None)
    # an "adapter" with 1-D lora tensors: summarised, and refused by check with a reason
    w = GGUFWriter(str(tmp_path / "flat.gguf"), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float("nan"))
    w.add_tensor(f"{ATTN_Q}.lora_a", np.zeros(64, np.float32))
    w.add_tensor(f"{ATTN_Q}.lora_b", np.zeros(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    j = json.loads(cli("info", "--json", str(tmp_path / "flat.gguf")).stdout)
    assert (j["kind"], j["companion"]["alpha"], j["companion"]["rank"]) == ("adapter", None, None)
    r = cli("check", str(base), "--lora", str(tmp_path / "flat.gguf"))
    assert r.exit_code == 1
    assert f"'{ATTN_Q}' is 64 x 64 but its lora_a is 64 x 1 and lora_b 64 x 1" in r.stdout


def test_mcp_imatrix_tool_equals_cli_json(cli: CliRun, tmp_path: Path, base: Path) -> None:
    from .test_mcp import session, text

    im = _imatrix(tmp_path)

    async def calls(c: Any) -> dict[str, Any]:
        return {
            "plain": await c.call_tool("imatrix", {"path": str(im)}),
            "model": await c.call_tool("imatrix", {"path": str(im), "model": str(base)}),
            "wrong": await c.call_tool("imatrix", {"path": str(base)}),
        }

    got = session(["--root", str(tmp_path)], calls)
    assert text(got["plain"]) + "\n" == cli("imatrix", "--json", str(im)).stdout
    assert text(got["model"]) + "\n" == cli("imatrix", "--json", str(im), "--model", str(base)).stdout
    assert got["wrong"].is_error and "not an imatrix" in text(got["wrong"])


def test_fit_with_a_projector_keeps_its_memory_free(cli: CliRun, hole_models: dict[str, Path]) -> None:
    """The quant card's question, "context on 24 GB + vision": the 27B hybrid with its projector
    gets a smaller context than without, by the projector's weights and warmup compute."""
    model, mm = str(hole_models["qwen36-27b"]), str(hole_models["mmproj-qwen36-27b"])
    alone = json.loads(cli("mem", model, "--fit", "24GiB", "--json").stdout)
    both = json.loads(cli("mem", model, "--fit", "24GiB", "--mmproj", mm, "--json").stdout)
    kept = both["projector_bytes"]["CUDA0"]
    assert abs(kept / MiB - (884.62 + 248.10)) <= 0.01  # the recorded log's model size + CUDA0 compute
    for a, b in zip(alone["fits"], both["fits"], strict=True):
        assert b["n_ctx"] <= a["n_ctx"] and b["gpu_bytes"] <= 24 * 1024 * MiB - kept
    assert both["fits"][0]["n_ctx"] < alone["fits"][0]["n_ctx"]
    assert both["llama_cpp"]["margin"]["CUDA0"] == 1024 * MiB + kept
    text = cli("mem", model, "--fit", "24GiB", "--mmproj", mm).stdout
    assert text.startswith("+ vision: the projector's weights and compute kept free (CUDA0 1,133 MiB)")
