"""``ggufx recipe --imatrix FILE --budget BPW``: the --tensor-type promotions that spend a bit budget
on the most important tensors.

Fast tests on synthetic quants (sizes worked out here from ggml's block table, not by ggufx), and,
under the ``llamacpp`` marker, the proof: llama-quantize run with the proposed command on SmolLM2
gives every planned type, and the size and BPW that llama-quantize and llama-completion print are
the ones ggufx predicted."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

import ggufx
from ggufx.analysis.promotion import ladder_of
from tests.support import CliRun

from . import companion_files as cf

# ggml/src/ggml.c type_traits: elements per block, bytes per block
BLOCK = {"F32": (1, 4), "Q4_0": (32, 18), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34)}
BLOCK.update({"Q5_K": (256, 176), "Q6_K": (256, 210)})
MiB = 1 << 20
N_EMBD, N_FF, N_VOCAB = 288, 512, 64  # 288 columns: a multiple of 32, not of 256 (K-quants fall back)


def _spec(with_output: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ne, type) of a two-layer llama-like Q4_0 quant."""
    s: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (N_EMBD, N_VOCAB), "Q8_0")]
    for i in range(2):
        s.append((f"blk.{i}.attn_norm.weight", (N_EMBD,), "F32"))
        for r in ("attn_q", "attn_k", "attn_v", "attn_output"):
            s.append((f"blk.{i}.{r}.weight", (N_EMBD, N_EMBD), "Q4_0"))
        s.append((f"blk.{i}.ffn_norm.weight", (N_EMBD,), "F32"))
        s.append((f"blk.{i}.ffn_gate.weight", (N_EMBD, N_FF), "Q4_0"))
        s.append((f"blk.{i}.ffn_up.weight", (N_EMBD, N_FF), "Q4_0"))
        s.append((f"blk.{i}.ffn_down.weight", (N_FF, N_EMBD), "Q4_0"))
    s.append(("output_norm.weight", (N_EMBD,), "F32"))
    if with_output:
        s.append(("output.weight", (N_EMBD, N_VOCAB), "Q4_0"))
    return s


def _nbytes(ne: tuple[int, ...], type_name: str) -> int:
    block, size = BLOCK[type_name]
    return int(np.prod(ne)) // block * size


def _totals(spec: list[tuple[str, tuple[int, ...], str]]) -> tuple[int, int]:
    """(elements, bytes) of all tensors."""
    return sum(int(np.prod(ne)) for _, ne, _ in spec), sum(_nbytes(ne, t) for _, ne, t in spec)


def _write_quant(path: Path, spec: list[tuple[str, tuple[int, ...], str]]) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    w.add_context_length(256)
    w.add_file_type(2)  # LLAMA_FTYPE_MOSTLY_Q4_0
    for name, ne, type_name in spec:
        if type_name == "F32":
            w.add_tensor(name, np.ones(tuple(reversed(ne)), np.float32))
            continue
        row = _nbytes((ne[0],), type_name)
        data = np.zeros((*reversed(ne[1:]), row), np.uint8)
        w.add_tensor(name, data, raw_dtype=GGMLQuantizationType[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _imatrix(path: Path, spec: list[tuple[str, tuple[int, ...], str]], important: dict[str, float]) -> Path:
    """Importance 1 for every matrix (``important`` overrides), as rows of ne[0] equal values."""
    values = {
        name: ([important.get(name, 1.0)] * ne[0], 1.0)
        for name, ne, t in spec
        if t != "F32" and name != "token_embd.weight" and (name != "output.weight" or name in important)
    }
    return cf.write_imatrix(path, values)


def _budget(spec: list[tuple[str, tuple[int, ...], str]], extra_bytes: int) -> str:
    params, nbytes = _totals(spec)
    return repr(8 * (nbytes + extra_bytes) / params)


def _plan(cli: CliRun, model: Path, im: Path, budget: str) -> dict:
    r = cli("recipe", str(model), "--imatrix", str(im), "--budget", budget, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def quant(tmp_path: Path) -> Path:
    return _write_quant(tmp_path / "model-Q4_0.gguf", _spec())


# ffn_down (ne0 512): Q4_0 -> Q5_K -> Q6_K -> Q8_0 adds 18432 + 19584 + 35712 bytes
FFN_DOWN_TO_Q8_0 = _nbytes((N_FF, N_EMBD), "Q8_0") - _nbytes((N_FF, N_EMBD), "Q4_0")
# the cheapest first step of any other matrix: a 288 x 288 Q4_0 -> Q5_0 (Q4_K's fallback)
CHEAPEST_STEP = _nbytes((N_EMBD, N_EMBD), "Q5_0") - _nbytes((N_EMBD, N_EMBD), "Q4_0")


def test_the_most_important_tensor_climbs_the_ladder_first(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    assert (FFN_DOWN_TO_Q8_0, CHEAPEST_STEP) == (73728, 10368)
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"blk.1.ffn_down.weight": 100.0})
    res = _plan(cli, quant, im, _budget(spec, FFN_DOWN_TO_Q8_0 + CHEAPEST_STEP - 1))
    assert [(p["name"], p["from"], p["to"], p["added_bytes"]) for p in res["promotions"]] == [
        ("blk.1.ffn_down.weight", "Q4_0", "Q8_0", FFN_DOWN_TO_Q8_0)
    ]
    p = res["promotions"][0]
    assert (p["importance"], p["rank"], p["role_count"], p["role"], p["layer"]) == (100.0, 1, 2, "ffn_down", 1)
    params, nbytes = _totals(spec)
    assert res["tensor_bytes"] == {"before": nbytes, "after": nbytes + 73728, "added": 73728}
    assert res["bpw"] == {"before": 8 * nbytes / params, "after": 8 * (nbytes + 73728) / params}
    assert res["promotion_rules"] == [{"pattern": r"^blk\.1\.ffn_down\.weight$", "type": "Q8_0", "tensors": 1}]
    # the promotions come first (llama-quantize takes the first pattern that matches), then the
    # recipe that keeps every other tensor as it is: --pure Q4_0, token_embd Q8_0
    assert res["args"] == [
        "--pure",
        "--allow-requantize",
        "--imatrix",
        str(im),
        "--token-embedding-type",
        "q8_0",
        "--tensor-type",
        r"^blk\.1\.ffn_down\.weight$=q8_0",
    ]
    assert res["command"].endswith("SOURCE.gguf OUT.gguf Q4_0")
    assert res["verified"] is True


def test_a_type_whose_block_does_not_divide_the_row_is_planned_as_its_fallback(
    cli: CliRun, quant: Path, tmp_path: Path
) -> None:
    # src/llama-quant.cpp tensor_type_fallback: 288 columns take Q4_K as Q5_0, Q5_K as Q5_1,
    # Q6_K as Q8_0; 512 columns take the K-quants themselves
    m = ggufx.open(quant)
    t = {x.name: x for x in m.tensors}
    assert ladder_of(t["blk.0.attn_v.weight"]) == ["Q5_0", "Q5_1", "Q8_0"]
    assert ladder_of(t["blk.0.ffn_up.weight"]) == ["Q5_0", "Q5_1", "Q8_0"]
    assert ladder_of(t["blk.0.ffn_down.weight"]) == ["Q5_K", "Q6_K", "Q8_0"]
    spec = _spec()
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"blk.0.attn_v.weight": 100.0})
    # room for Q4_0 -> Q5_0 (10368 bytes) but not the next step to Q5_1 (5184 more)
    res = _plan(cli, quant, im, _budget(spec, CHEAPEST_STEP + 5000))
    assert [(p["name"], p["to"], p["added_bytes"]) for p in res["promotions"]] == [
        ("blk.0.attn_v.weight", "Q5_0", 10368)
    ]
    assert res["promotion_rules"] == [{"pattern": r"^blk\.0\.attn_v\.weight$", "type": "Q5_0", "tensors": 1}]


def test_a_role_promoted_in_every_layer_is_one_rule(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"blk.0.ffn_down.weight": 90.0, "blk.1.ffn_down.weight": 100.0})
    res = _plan(cli, quant, im, _budget(spec, 2 * FFN_DOWN_TO_Q8_0 + CHEAPEST_STEP - 1))
    assert [(p["name"], p["to"]) for p in res["promotions"]] == [
        ("blk.1.ffn_down.weight", "Q8_0"),
        ("blk.0.ffn_down.weight", "Q8_0"),
    ]
    assert res["promotion_rules"] == [{"pattern": r"^blk\.\d+\.ffn_down\.weight$", "type": "Q8_0", "tensors": 2}]


def test_the_output_tensor_is_promoted_through_its_own_option(cli: CliRun, tmp_path: Path) -> None:
    # llama_tensor_get_type: --output-tensor-type, once given, wins over every --tensor-type
    spec = _spec(with_output=True)
    model = _write_quant(tmp_path / "model-Q4_0.gguf", spec)
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"output.weight": 1000.0})
    to_q8 = _nbytes((N_EMBD, N_VOCAB), "Q8_0") - _nbytes((N_EMBD, N_VOCAB), "Q4_0")
    res = _plan(cli, model, im, _budget(spec, to_q8 + 1000))
    assert [(p["name"], p["to"], p["added_bytes"]) for p in res["promotions"]] == [("output.weight", "Q8_0", 9216)]
    assert res["output_tensor_type"] == "Q8_0" and res["promotion_rules"] == []
    i = res["args"].index("--output-tensor-type")
    assert res["args"][i + 1] == "q8_0"
    assert "--tensor-type" not in res["args"]


def test_the_budget_is_never_exceeded_and_a_large_one_takes_every_matrix_to_q8_0(
    cli: CliRun, quant: Path, tmp_path: Path
) -> None:
    spec = _spec()
    params, _ = _totals(spec)
    rng = random.Random(3)
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {n: rng.uniform(0.1, 50) for n, _, t in spec if t == "Q4_0"})
    for budget in ("4.6", "4.75", "5", "5.5", "6.25", "7", "8"):
        res = _plan(cli, quant, im, budget)
        assert 8 * res["tensor_bytes"]["after"] <= float(budget) * params, budget
        assert res["verified"] is True
    res = _plan(cli, quant, im, "20")
    assert sorted(p["name"] for p in res["promotions"]) == sorted(n for n, _, t in spec if t == "Q4_0")
    assert {p["to"] for p in res["promotions"]} == {"Q8_0"}
    # every matrix at Q8_0: two whole-role rules per role
    assert len(res["promotion_rules"]) == 7
    assert res["tensor_bytes"]["after"] == sum(_nbytes(ne, "Q8_0" if t == "Q4_0" else t) for _, ne, t in spec)


def test_json_keys(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    im = _imatrix(tmp_path / "imatrix.gguf", _spec(), {})
    res = _plan(cli, quant, im, "6")
    assert list(res) == [
        "path",
        "budget_bpw",
        "rule",
        "parameters",
        "bpw",
        "tensor_bytes",
        "promotions",
        "promotion_rules",
        "base",
        "base_type",
        "rules",
        "output_tensor_type",
        "token_embedding_type",
        "pure",
        "allow_requantize",
        "imatrix",
        "args",
        "command",
        "tensor_type_file",
        "unreproducible",
        "verified",
    ]
    assert list(res["promotions"][0]) == [
        "name",
        "role",
        "layer",
        "importance",
        "rank",
        "role_count",
        "from",
        "to",
        "added_bytes",
        "added_mib",
    ]


def test_text_shows_the_table_the_bpw_and_the_command(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"blk.1.ffn_down.weight": 100.0})
    budget = _budget(spec, FFN_DOWN_TO_Q8_0 + 100)
    r = cli("recipe", str(quant), "--imatrix", str(im), "--budget", budget)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["tensor", "importance", "rank", "from", "to", "added", "MiB"]
    assert lines[2].split() == ["blk.1.ffn_down.weight", "100", "1/2", "Q4_0", "Q8_0", "0.070"]
    assert "1 tensor(s) promoted by 1 rule(s)" in r.stdout
    assert lines[-1].startswith("llama-quantize --pure --allow-requantize --imatrix ")
    ttf = cli("recipe", str(quant), "--imatrix", str(im), "--budget", budget, "--format", "tensor-type-file")
    assert ttf.stdout == "^blk\\.1\\.ffn_down\\.weight$=q8_0\n"


def test_a_budget_with_no_room_promotes_nothing(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {})
    res = _plan(cli, quant, im, _budget(spec, CHEAPEST_STEP - 1))
    assert res["promotions"] == [] and res["promotion_rules"] == []
    assert res["tensor_bytes"]["added"] == 0
    r = cli("recipe", str(quant), "--imatrix", str(im), "--budget", _budget(spec, 100))
    assert "no promotion fits the budget" in r.stdout


def _one_line_error(r, *fragments: str) -> None:
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ggufx: error: "), r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def test_a_budget_below_the_files_bpw_exits_2(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    params, nbytes = _totals(spec)
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {})
    r = cli("recipe", str(quant), "--imatrix", str(im), "--budget", "4.5")
    _one_line_error(r, "--budget", f"the budget 4.5 BPW is below the model's {8 * nbytes / params:.4f} BPW")
    _one_line_error(cli("recipe", str(quant), "--budget", "6"), "--imatrix and --budget go together")
    _one_line_error(cli("recipe", str(quant), "--imatrix", str(im)), "--imatrix and --budget go together")


def test_an_imatrix_of_another_model_exits_2(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    spec = _spec()
    missing = _imatrix(tmp_path / "missing.gguf", [s for s in spec if s[0] != "blk.1.attn_k.weight"], {})
    r = cli("recipe", str(quant), "--imatrix", str(missing), "--budget", "6")
    _one_line_error(r, str(missing), "1 quantizable tensor(s) have no importance data: blk.1.attn_k.weight")
    other = cf.write_imatrix(
        tmp_path / "other.gguf", {n: ([1.0] * 64, 1.0) for n, _, t in spec if t == "Q4_0"}
    )  # a model of 64 columns
    r = cli("recipe", str(quant), "--imatrix", str(other), "--budget", "6")
    _one_line_error(r, str(other), "have importance data of the wrong size")
    r = cli("recipe", str(quant), "--imatrix", str(quant), "--budget", "6")  # a model, not an imatrix
    _one_line_error(r, str(quant), "not an imatrix")


# --- against llama.cpp -------------------------------------------------------------------------

WORDS = (
    "a lighthouse keeper wrote letters about storms and ships and the gulls that nested on the rocks "
    "below while the town baked bread sold fish and mended nets through the long grey months of spring"
).split()
_TENSOR_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s+(\w+),(?: converting to (\w+))?")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return p


@pytest.fixture(scope="module")
def smol_imatrix(llama_bin: Path, smollm2_path: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imatrix")
    rng = random.Random(29)
    (d / "text.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(18)) for _ in range(100)) + "\n")
    out = d / "imatrix.gguf"
    _run(
        [str(llama_bin / "llama-imatrix"), "-m", str(smollm2_path), "-f", "text.txt", "-o", str(out)]
        + ["--chunks", "2", "-c", "128", "-t", "2"],
        d,
    )
    return out


@pytest.mark.llamacpp
@pytest.mark.parametrize(("base", "budget"), [("Q4_1", "6"), ("Q4_K_M", "6.4")])
def test_llama_quantize_applies_the_plan_with_the_predicted_size(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, smol_imatrix: Path, tmp_path: Path, base: str, budget: str
) -> None:
    model = smollm2_path  # SmolLM2 as published: Q4_1, token_embd Q8_0
    if base != "Q4_1":  # llama-quantize's own mixture, which the plan must keep outside its promotions
        model = tmp_path / f"smol-{base}.gguf"
        _run(
            [str(llama_bin / "llama-quantize"), "--allow-requantize", str(smollm2_path), str(model), base, "2"],
            tmp_path,
        )
    plan = _plan(cli, model, smol_imatrix, budget)
    assert len(plan["promotions"]) >= 10 and plan["verified"]
    assert plan["bpw"]["before"] < plan["bpw"]["after"] <= float(budget)

    out = tmp_path / "promoted.gguf"
    # the command as planned, on SmolLM2 itself (quantized, hence --allow-requantize, in the args)
    q = _run(
        [str(llama_bin / "llama-quantize"), *plan["args"], str(smollm2_path), str(out), plan["base"], "2"], tmp_path
    )
    log = q.stdout + q.stderr
    applied = {}
    for line in log.splitlines():
        if m := _TENSOR_LINE.match(line):
            applied[m[1]] = (m[3] or m[2]).upper()
    planned = {t.name: t.type.name for t in ggufx.open(model).tensors}
    planned.update({p["name"]: p["to"] for p in plan["promotions"]})
    assert len(applied) == len(planned) == 272
    assert applied == planned, {k: (v, applied.get(k)) for k, v in planned.items() if applied.get(k) != v}

    after, params = plan["tensor_bytes"]["after"], plan["parameters"]
    # llama_model_quantize_impl: "quant size  = %8.2f MiB (%.2f BPW)"
    assert f"quant size  = {after / MiB:8.2f} MiB ({8 * after / params:.2f} BPW)" in log
    # the loader: "print_info: file size   = %.2f MiB (%.2f BPW)" (src/llama-model-loader.cpp:1806)
    c = _run(
        [
            str(llama_bin / "llama-completion"),
            "-m",
            str(out),
            "-n",
            "1",
            "-p",
            "hi",
            "-no-cnv",
            "-t",
            "2",
            "--no-warmup",
            "-v",
        ],
        tmp_path,
    )
    printed = re.search(r"file size\s+=\s+([\d.]+) MiB \(([\d.]+) BPW\)", c.stdout + c.stderr)
    assert printed is not None
    assert (printed[1], printed[2]) == (f"{after / MiB:.2f}", f"{8 * after / params:.2f}")
    info = json.loads(cli("info", "--json", str(out)).stdout)
    assert (info["tensor_bytes"], info["parameters"]) == (after, params)


def test_mcp_recipe_with_a_budget_equals_cli_json(cli: CliRun, quant: Path, tmp_path: Path) -> None:
    """An agent asking the MCP `recipe` tool for a budget gets what `recipe --json` prints."""
    from .test_mcp import session

    spec = _spec()
    im = _imatrix(tmp_path / "imatrix.gguf", spec, {"blk.1.ffn_down.weight": 100.0})
    budget = _budget(spec, FFN_DOWN_TO_Q8_0)
    expected = _plan(cli, quant, im, budget)

    async def call(c: Any) -> Any:
        return await c.call_tool("recipe", {"path": str(quant), "imatrix": str(im), "budget": float(budget)})

    got = session(["--root", str(tmp_path)], call)
    assert not got.is_error and got.structured_content == expected
