"""Roles, layer kinds, recipes, diffs and memory, computed from headers alone."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.diff import diff, layer_ranges
from ggufx.analysis.layers import layer_grid, layer_kinds
from ggufx.analysis.memory.estimate import estimate, parse_size
from ggufx.analysis.memory.fit import fit
from ggufx.analysis.memory.hparams import row_size
from ggufx.analysis.recipe import check_recipe, fallback, recipe
from ggufx.analysis.roles import parse_name, role_table
from ggufx.analysis.summary import summarize
from tests.support import FIXTURES, CliRun

MiB = 1 << 20


@pytest.fixture(scope="session")
def qwen36(tmp_path_factory) -> Path:
    from tests.fixtures.make_fixtures import qwen36_27b_header

    p = tmp_path_factory.mktemp("hybrid") / "qwen3.6-27b-header.gguf"
    qwen36_27b_header(p)
    return p


@pytest.mark.parametrize(
    "name,expected",
    [
        ("blk.12.ffn_up.weight", (12, "ffn_up", "weight", None, "ffn_up")),
        ("blk.0.ffn_gate_exps.weight", (0, "ffn_gate_exps", "weight", None, "ffn_gate_exps")),
        ("blk.3.attn_q.bias", (3, "attn_q", "bias", None, "attn_q.bias")),
        ("blk.7.ssm_conv1d.weight", (7, "ssm_conv1d", "weight", None, "ssm_conv1d")),
        ("blk.7.ssm_a", (7, "ssm_a", "", None, "ssm_a")),
        ("token_embd.weight", (None, "token_embd", "weight", None, "token_embd")),
        ("output_norm.weight", (None, "output_norm", "weight", None, "output_norm")),
        ("rope_freqs.weight", (None, "rope_freqs", "weight", None, "rope_freqs")),
        ("v.blk.2.attn_q.weight", (2, "attn_q", "weight", "vision", "v.attn_q")),
        ("mm.input_projection.weight", (None, "input_projection", "weight", "projector", "mm.input_projection")),
        ("blk.1.something_new.weight", (1, "something_new", "weight", None, "something_new")),
    ],
)
def test_parse_name(name: str, expected: tuple) -> None:
    r = parse_name(name)
    assert (r.layer, r.role, r.kind, r.tower, r.label) == expected


def test_role_table_adds_up(cli: CliRun, gemma_path: Path) -> None:
    m = ggufx.open(gemma_path)
    rows = role_table(m)
    s = summarize(m)
    assert sum(r.bytes for r in rows) == s.tensor_bytes and sum(r.parameters for r in rows) == s.parameters
    assert sum(r.tensors for r in rows) == s.tensor_count
    by = {r.role: r for r in rows}
    assert by["ffn_down"].types == {"Q4_K": 9, "Q6_K": 9} and by["ffn_down"].layers == 18
    assert by["token_embd"].types == {"Q8_0": 1} and rows[0].role == "token_embd"
    assert by["ffn_down"].bpw == 8 * by["ffn_down"].bytes / by["ffn_down"].parameters
    d = json.loads(cli("roles", str(gemma_path), "--json").output)
    assert [r["role"] for r in d["roles"]] == [r.role for r in rows]


def test_gemma3_layer_kinds_follow_llama_cpp_swa_pattern(gemma_path: Path) -> None:
    kinds = layer_kinds(ggufx.open(gemma_path))
    assert [k.index for k in kinds if not k.is_swa] == [5, 11, 17]  # load_swa_pattern(ml, 6)
    assert all(k.is_attention and k.ffn == "dense" for k in kinds)
    grid = layer_grid(ggufx.open(gemma_path))
    assert grid.counts() == {"attention (SWA)": 15, "attention": 3}
    # collapsed rows cover every layer exactly once and keep identical neighbours together
    covered = [i for r in grid.rows for i in range(r.first, r.last + 1)]
    assert covered == list(range(18))
    first = grid.rows[0]
    assert (first.first, first.last, first.types["ffn_down"], first.types["attn_v"]) == (0, 1, "Q6_K", "Q8_0")


def test_hybrid_layers(cli: CliRun, qwen36: Path) -> None:
    m = ggufx.open(qwen36)
    kinds = layer_kinds(m)
    assert [k.index for k in kinds if k.is_attention] == list(range(3, 64, 4))
    assert sum(k.is_recurrent for k in kinds) == 48 and kinds[0].mixer == "recurrent (Gated DeltaNet)"
    roles = {r.role: r for r in role_table(m)}
    assert roles["ssm_out"].types == {"Q8_0": 48} and roles["attn_q"].tensors == 16
    text = cli("layers", str(qwen36)).output
    assert "64 layers: 48 recurrent (Gated DeltaNet), 16 attention" in text


def test_memory_matches_the_published_hybrid_figures(cli: CliRun, qwen36: Path) -> None:
    m = ggufx.open(qwen36)
    e = estimate(m, 262144, cache_type_k="q4_0", cache_type_v="q4_0")
    # 16 attention layers x 4 KV heads x 256 dims x 262,144 cells x (K + V) in q4_0 (18 bytes / 32)
    assert e.kv == 4608 * MiB and e.kv_layers == 16 and e.kv_swa == 0
    # 48 Gated DeltaNet layers: conv (3 x (6144 + 2 x 16 x 128)) + state (128 x 6144) f32 values
    assert e.recurrent == 48 * 4 * (3 * (6144 + 2 * 16 * 128) + 128 * 6144)
    assert 149 * MiB < e.recurrent < 151 * MiB
    f16 = estimate(m, 262144)
    assert f16.kv == 16 * 2 * 4 * 256 * 262144 * 2
    fits = {f.cache_type: f.n_ctx for f in fit(m, parse_size("24GiB"))}
    assert fits["f16"] < fits["q8_0"] <= fits["q4_0"] and all(n % 256 == 0 for n in fits.values())
    d = json.loads(cli("mem", str(qwen36), "--ctx", "262144", "-ctk", "q4_0", "-ctv", "q4_0", "--json").output)
    assert d["kv_cache"]["bytes"] == 4608 * MiB and d["recurrent_state"]["layers"] == 48


def test_memory_swa_window_and_parallel(gemma_path: Path) -> None:
    m = ggufx.open(gemma_path)
    e = estimate(m, 4096, cache_type_k="q8_0", cache_type_v="q8_0")
    # 3 global layers x 4096 cells and 15 sliding layers x pad256(512 + 512) cells, 1 KV head of 256
    assert (e.kv_cells, e.kv_swa_cells, e.kv_layers, e.kv_swa_layers) == (4096, 1024, 3, 15)
    assert e.kv == 3 * 4096 * 2 * row_size("q8_0", 256) and e.kv_swa == 15 * 1024 * 2 * row_size("q8_0", 256)
    assert estimate(m, 1000).n_ctx == 1024  # padded to 256 like llama.cpp
    e2 = estimate(m, 4096, parallel=4)
    assert e2.kv_cells == 1024 and e2.kv == estimate(m, 4096).kv
    assert "tied embeddings" in " ".join(e.notes)


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 << 30 and parse_size("24G") == 24 << 30 and parse_size("24GB") == 24 * 10**9
    assert parse_size("16000MiB") == 16000 << 20
    with pytest.raises(ValueError):
        parse_size("lots")


def test_fallback_types() -> None:
    assert fallback("Q4_K", 576) == "Q5_0" and fallback("Q4_K", 1536) == "Q4_K"
    assert fallback("Q6_K", 640) == "Q8_0" and fallback("IQ4_XS", 576) == "IQ4_NL"
    assert fallback("Q4_K", 100) == "F16"


def test_recipe_reproduces_the_files(cli: CliRun, real_models) -> None:
    for path in [*real_models.values(), FIXTURES / "all-types-v3.gguf"]:
        m = ggufx.open(path)
        rec = recipe(m)
        assert check_recipe(m, rec) == [], path
    g = recipe(ggufx.open(real_models["gemma"]))
    assert g.ftype == "Q4_K_M" and g.token_embedding_type == "Q8_0"
    assert [r.type for r in g.rules] == ["Q8_0", "Q6_K"]
    assert g.rules[0].pattern == r"^blk\.(0|1|4|7|10|13|15|16|17)\.attn_v\.weight$"
    r = cli("recipe", str(real_models["gemma"]), "--format", "tensor-type-file")
    assert r.output.splitlines() == [
        r"^blk\.(0|1|4|7|10|13|15|16|17)\.attn_v\.weight$=q8_0",
        r"^blk\.(0|1|4|7|10|13|15|16|17)\.ffn_down\.weight$=q6_k",
    ]
    d = json.loads(cli("recipe", str(real_models["gemma"]), "--json").output)
    assert d["base"] == "Q4_K_M" and d["verified"] and len(d["rules"]) == 2 and "--pure" in d["args"]


def test_recipe_rules_are_first_match_wins(tmp_path: Path, monkeypatch) -> None:
    from gguf import GGMLQuantizationType as Q

    import tests.fixtures.make_fixtures as mf

    # attn_v in four layers: Q6_K in three (a role-wide rule) and Q8_0 in layer 2 (an exception to it)
    attn_v = [(f"blk.{il}.attn_v.weight", Q.Q8_0 if il == 2 else Q.Q6_K, (256, 2)) for il in range(1, 4)]
    monkeypatch.setattr(mf, "TENSORS", [*mf.TENSORS, *attn_v])
    p = tmp_path / "exception.gguf"
    mf.write_model(p)
    m = ggufx.open(p)
    rec = recipe(m)
    hits = {t.name: [r for r in rec.rules if re.search(r.pattern, t.name)] for t in m.tensors}
    assert all(len(h) <= 2 for h in hits.values())  # an exception and its role-wide rule at most
    (both,) = [name for name, h in hits.items() if len(h) == 2]  # exactly one tensor matches two rules
    assert both == "blk.2.attn_v.weight"
    assert [(r.pattern, r.type, r.tensors) for r in hits[both]] == [
        (r"^blk\.(2)\.attn_v\.weight$", "Q8_0", 1),  # the exception comes first and wins
        (r"^blk\.\d+\.attn_v\.weight$", "Q6_K", 3),
    ]
    assert check_recipe(m, rec) == []
    # applied last-match-wins (the rules reversed) the recipe would get exactly that tensor wrong
    reversed_rules = dataclasses.replace(rec, rules=rec.rules[::-1])
    assert check_recipe(m, reversed_rules) == ["blk.2.attn_v.weight"]


def test_diff_groups_by_role_and_layers(cli: CliRun, real_models, tmp_path: Path) -> None:
    a = tmp_path / "a.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", a)
    assert cli("set", str(a), "general.name", "changed").exit_code == 0
    d = diff(ggufx.open(FIXTURES / "all-types-v3.gguf"), ggufx.open(a))
    assert d.identical_tensors and d.metadata_changed == ["general.name"]
    r = cli("diff", str(FIXTURES / "all-types-v3.gguf"), str(a))
    assert r.exit_code == 0 and "same names, shapes and types" in r.output
    d = diff(ggufx.open(real_models["smollm2"]), ggufx.open(real_models["gemma"]))
    assert not d.identical_tensors and d.added and d.removed
    r = cli("diff", str(real_models["smollm2"]), str(real_models["gemma"]), "--json")
    assert r.exit_code == 1 and json.loads(r.output)["bpw"]["a"] == round(ggufx.info(real_models["smollm2"]).bpw, 4)


def test_layer_ranges() -> None:
    assert layer_ranges([12, 13, 14, 16, 0]) == "0, 12-14, 16"
    assert layer_ranges([]) == ""


def test_diff_reports_type_changes(cli: CliRun, tmp_path: Path, monkeypatch) -> None:
    from gguf import GGMLQuantizationType as Q

    import tests.fixtures.make_fixtures as mf

    changed = [(n, Q.Q8_0 if n in ("blk.0.attn_v.weight", "output.weight") else q, s) for n, q, s in mf.TENSORS]
    monkeypatch.setattr(mf, "TENSORS", changed)
    b = tmp_path / "b.gguf"
    mf.write_model(b)
    d = diff(ggufx.open(FIXTURES / "all-types-v3.gguf"), ggufx.open(b))
    got = {(c.role, c.layers, c.before, c.after, c.tensors) for c in d.type_changes}
    assert got == {("attn_v", "0", "Q6_K", "Q8_0", 1), ("output", "", "Q4_0", "Q8_0", 1)}
    assert d.b_bytes > d.a_bytes and d.b_bpw > d.a_bpw
    r = cli("diff", str(FIXTURES / "all-types-v3.gguf"), str(b))
    assert r.exit_code == 1 and re.search(r"^attn_v +0 +Q6_K +Q8_0 +1$", r.output, re.M)


# -- report --------------------------------------------------------------------------------------


def test_report_html_contains_the_numbers_and_escapes_metadata(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    shutil.copy(smollm2_path, p)
    assert cli("set", str(p), "general.name", "<script>alert(1)</script> & co").exit_code == 0
    out = tmp_path / "report.html"
    r = cli("report", str(p), "-o", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    s = ggufx.info(p)
    assert f'<td id="parameters">{s.parameters:,}</td>' in html and f'<td id="bpw">{s.bpw:.4f}</td>' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    heat = html.split('<figure id="memory-chart">')[0]  # the layer heat map, before the memory chart
    assert heat.count("<rect ") == sum(1 for t in ggufx.open(p).tensors if parse_name(t.name).layer is not None)
    assert 'id="dialect">none' in html
    md = cli("report", str(p), "--format", "md").output
    assert md.startswith("# \\<script\\>alert(1)\\</script\\> & co") and f"| parameters | {s.parameters:,} |" in md
    d = json.loads(cli("report", str(p), "--json").output)
    assert d["summary"]["parameters"] == s.parameters and d["chat_template"]["family"] == "chatml"


def test_report_opens_in_headless_chromium(cli: CliRun, gemma_path: Path, tmp_path: Path) -> None:
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    out = tmp_path / "report.html"
    assert cli("report", str(gemma_path), "-o", str(out)).exit_code == 0
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    s = ggufx.info(gemma_path)
    assert f'<td id="bpw">{s.bpw:.4f}</td>' in dom and "<svg" in dom and dom.count("<rect") > 200
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Refused to" in ln]
    assert console == []


def test_analysis_on_split_models_equals_the_whole(cli: CliRun) -> None:
    whole, split = FIXTURES / "all-types-v3.gguf", FIXTURES / "split-00002-of-00003.gguf"
    for cmd in (["roles"], ["layers"], ["recipe"]):
        a = json.loads(cli(*cmd, str(whole), "--json").output)
        b = json.loads(cli(*cmd, str(split), "--json").output)
        a.pop("path", None), b.pop("path", None)
        assert a == b, cmd
    assert cli("diff", str(whole), str(split)).exit_code == 0  # same tensors; split keys differ


def test_moe_layers(tmp_path: Path) -> None:
    from tests.fixtures.make_fixtures import STR, U32, Raw

    r = Raw()
    r.kv("general.architecture", STR, r.s("qwen3moe"))
    r.kv("qwen3moe.block_count", U32, r.p("I", 2))
    off = 0
    for il in range(2):
        for role, shape in (
            ("attn_q", (64, 64)),
            ("attn_k", (64, 16)),
            ("attn_v", (64, 16)),
            ("ffn_gate_inp", (64, 4)),
            ("ffn_up_exps", (64, 32, 4)),
            ("ffn_down_exps", (32, 64, 4)),
        ):
            r.tensor(f"blk.{il}.{role}.weight", shape, 0, off)
            n = 1
            for d in shape:
                n *= d
            off += n * 4
    p = tmp_path / "moe.gguf"
    p.write_bytes(r.build() + bytes(off))
    kinds = layer_kinds(ggufx.open(p))
    assert [(k.mixer, k.ffn, k.label) for k in kinds] == [("attention", "MoE", "attention + MoE")] * 2
    roles = {x.role: x for x in role_table(ggufx.open(p))}
    assert roles["ffn_up_exps"].parameters == 2 * 64 * 32 * 4
