"""Scanning folders, a fake Hugging Face cache and a fake Ollama store built in tmp."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ggufx.analysis.scan import scan
from tests.support import FIXTURES, CliRun

from . import companion_files as cf


def _hf_cache(root: Path) -> Path:
    repo = root / "hub" / "models--HuggingFaceTB--SmolLM2-GGUF"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123456789abcdef0123"
    snap.mkdir(parents=True)
    blob = repo / "blobs" / ("e" * 64)
    shutil.copy(FIXTURES / "all-types-v3.gguf", blob)
    (snap / "model-q4.gguf").symlink_to(Path("../../blobs") / blob.name)
    return root / "hub"


def _ollama(root: Path) -> Path:
    store = root / "ollama"
    (store / "blobs").mkdir(parents=True)
    digest = "sha256:" + "a" * 64
    shutil.copy(FIXTURES / "big-endian.gguf", store / "blobs" / digest.replace(":", "-"))
    for ns, name, tag in (("library", "smol", "latest"), ("someone", "tiny", "q4")):
        mdir = store / "manifests" / "registry.ollama.ai" / ns / name
        mdir.mkdir(parents=True)
        (mdir / tag).write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "layers": [
                        {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": 1},
                        {
                            "mediaType": "application/vnd.ollama.image.template",
                            "digest": "sha256:" + "b" * 64,
                            "size": 1,
                        },
                    ],
                }
            )
        )
    return store


def test_scan_hf_cache_and_ollama(cli: CliRun, tmp_path: Path) -> None:
    hf, ol = _hf_cache(tmp_path), _ollama(tmp_path)
    rows = {r.name: r for r in scan([str(hf), str(ol)])}
    assert set(rows) == {"HuggingFaceTB/SmolLM2-GGUF@0123456789ab/model-q4.gguf", "smol:latest", "someone/tiny:q4"}
    hf_row = rows["HuggingFaceTB/SmolLM2-GGUF@0123456789ab/model-q4.gguf"]
    assert (
        hf_row.source == "hf-cache"
        and hf_row.architecture == "llama"
        and hf_row.dialect == "none"
        and not hf_row.problems
    )
    assert rows["smol:latest"].source == "ollama" and rows["smol:latest"].parameters == hf_row.parameters
    # --hf-cache and --ollama find the stores through the usual environment variables
    r = cli("scan", "--hf-cache", "--ollama", "--json", env={"HF_HUB_CACHE": str(hf), "OLLAMA_MODELS": str(ol)})
    assert r.exit_code == 0, r.output
    assert {m["name"] for m in json.loads(r.output)["models"]} == set(rows)


def test_scan_groups_shards_and_reports_problems(cli: CliRun, tmp_path: Path) -> None:
    d = tmp_path / "models"
    d.mkdir()
    for i in (1, 2, 3):
        shutil.copy(FIXTURES / f"split-0000{i}-of-00003.gguf", d)
    broken = d / "broken"
    broken.mkdir()
    for i in (1, 3):
        shutil.copy(FIXTURES / f"split-0000{i}-of-00003.gguf", broken)
    shutil.copy(FIXTURES / "malformed" / "truncated-in-tensor-data.gguf", d / "corrupt.gguf")
    shutil.copy(FIXTURES / "all-types-v3.gguf", d / "good.gguf")
    (d / "notes.txt").write_text("not a model")
    rows = {os.path.basename(r.path): r for r in scan([str(d)])}
    assert rows["split-00001-of-00003.gguf"].shards == 3 or rows["split-00001-of-00003.gguf"].problems
    full = [r for r in scan([str(d)]) if r.path.endswith("models/split-00001-of-00003.gguf")][0]
    assert full.shards == 3 and not full.problems and "(3 shards found)" in full.name
    missing = [r for r in scan([str(d)]) if "/broken/" in r.path][0]
    assert "shard 2 of 3 is missing" in missing.problems[0] and "(2 shards found)" in missing.name
    lone = d.parent / "lone"
    lone.mkdir()
    shutil.copy(FIXTURES / "split-00002-of-00003.gguf", lone)
    (one,) = scan([str(lone)])
    assert "(1 shard found)" in one.name and "shard 1 of 3 is missing" in one.problems[0]
    assert "runs past the end of the file" in rows["corrupt.gguf"].problems[0]
    assert rows["good.gguf"].problems == []
    r = cli("scan", str(d))
    assert r.exit_code == 1 and "4 model(s), 2 with problems" in r.output


def test_scan_reports_template_errors(cli: CliRun, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    p = d / "model.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", p)
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    assert cli("template", "set", str(p), "--from", str(bad)).exit_code == 0
    (row,) = scan([str(d)])
    assert any(x.startswith("template syntax") for x in row.problems)
    (row,) = scan([str(d)], lint_templates=False)
    assert row.problems == []


def test_scan_pairs_companions_with_the_models_beside_them(cli: CliRun, tmp_path: Path) -> None:
    """A repository folder: two quants, a projector and an adapter that fit them, a projector for
    another model; a lone projector elsewhere is no problem."""
    repo, alone = tmp_path / "repo", tmp_path / "alone"
    repo.mkdir()
    alone.mkdir()
    cf.write_base(repo / "m-Q8_0.gguf")
    cf.write_base(repo / "m-F16.gguf")
    cf.write_projector(repo / "mmproj-F16.gguf", projection_dim=64)
    cf.write_projector(repo / "mmproj-other.gguf", projection_dim=128)
    cf.write_lora(repo / "lora.gguf", {"blk.0.attn_q.weight": (64, 64)})
    cf.write_control_vector(repo / "cv.gguf", n_embd=32, layers=2)
    cf.write_projector(alone / "mmproj.gguf")
    r = cli("scan", "--json", "--no-lint", str(tmp_path))
    assert r.exit_code == 1, r.output
    rows = {Path(m["name"]).name: m for m in json.loads(r.stdout)["models"]}
    models = [str(repo / "m-F16.gguf"), str(repo / "m-Q8_0.gguf")]
    assert {n: m["kind"] for n, m in rows.items()} == {
        "m-Q8_0.gguf": "model",
        "m-F16.gguf": "model",
        "mmproj-F16.gguf": "projector",
        "mmproj-other.gguf": "projector",
        "lora.gguf": "adapter",
        "cv.gguf": "control-vector",
        "mmproj.gguf": "projector",
    }
    assert sorted(rows["mmproj-F16.gguf"]["companion_of"]) == models and not rows["mmproj-F16.gguf"]["problems"]
    assert sorted(rows["lora.gguf"]["companion_of"]) == models
    assert sorted(rows["m-F16.gguf"]["companions"]) == [str(repo / "lora.gguf"), str(repo / "mmproj-F16.gguf")]
    other = rows["mmproj-other.gguf"]
    assert other["companion_of"] == [] and len(other["mismatches"]) == 2
    assert {m["reason"] for m in other["mismatches"]} == {
        "the projector projects to 128 but the model's embedding is 64"
    }
    assert other["problems"][0].startswith("fits none of the 2 model(s) beside it;")
    cv = rows["cv.gguf"]
    assert cv["mismatches"][0]["reason"] == "its directions have 32 values but the model's embedding is 64"
    assert rows["mmproj.gguf"]["problems"] == [] and rows["mmproj.gguf"]["mismatches"] == []
    text = cli("scan", "--no-lint", str(tmp_path)).stdout
    assert f"projector {repo / 'mmproj-F16.gguf'}: fits 2 of 2 model(s)" in text
    assert text.rstrip().endswith("2 model(s), 5 companion file(s), 2 with problems")


def test_scan_pairs_an_ollama_projector_with_its_model(tmp_path: Path) -> None:
    """Ollama keeps a vision model's projector as a layer of the same manifest."""
    store = tmp_path / "ollama"
    (store / "blobs").mkdir(parents=True)
    blobs = {}
    for part, write in (("model", cf.write_base), ("projector", cf.write_projector)):
        digest = "sha256:" + hashlib.sha256(part.encode()).hexdigest()
        write(store / "blobs" / digest.replace(":", "-"))
        blobs[part] = digest
    mdir = store / "manifests" / "registry.ollama.ai" / "library" / "vis"
    mdir.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": blobs["model"], "size": 1},
        {"mediaType": "application/vnd.ollama.image.projector", "digest": blobs["projector"], "size": 1},
    ]
    (mdir / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    rows = {r.name: r for r in scan([str(store)], lint_templates=False)}
    assert {n: r.kind for n, r in rows.items()} == {"vis:latest": "model", "vis:latest (projector)": "projector"}
    assert rows["vis:latest (projector)"].companion_of == ["vis:latest"]
    assert rows["vis:latest"].companions == ["vis:latest (projector)"]


def test_scan_pairs_by_name_in_a_flat_folder(tmp_path: Path) -> None:
    """A flat ~/models: two model families of the same width and a projector named after one; the
    projector is checked only against the model it names, a nameless one against all."""
    cf.write_base(tmp_path / "Alpha-7B-Instruct-Q4_K_M.gguf")
    cf.write_base(tmp_path / "Beta-7B-UD-Q4_K_XL.gguf")
    cf.write_projector(tmp_path / "mmproj-Alpha-7B-Instruct-F16.gguf", projection_dim=64)
    cf.write_projector(tmp_path / "mmproj-BF16.gguf", projection_dim=64)
    rows = {Path(r.name).name: r for r in scan([str(tmp_path)], lint_templates=False)}
    assert [Path(n).name for n in rows["mmproj-Alpha-7B-Instruct-F16.gguf"].companion_of] == [
        "Alpha-7B-Instruct-Q4_K_M.gguf"
    ]
    assert sorted(Path(n).name for n in rows["mmproj-BF16.gguf"].companion_of) == [
        "Alpha-7B-Instruct-Q4_K_M.gguf",
        "Beta-7B-UD-Q4_K_XL.gguf",
    ]
    assert [Path(n).name for n in rows["Beta-7B-UD-Q4_K_XL.gguf"].companions] == ["mmproj-BF16.gguf"]


def test_name_stems_follow_hugging_face_names() -> None:
    from ggufx.analysis.scan import name_stem

    assert name_stem("mmproj-Qwen3-VL-8B-Instruct-F16.gguf") == name_stem("Qwen3-VL-8B-Instruct-UD-Q4_K_XL.gguf")
    assert name_stem("Qwen3-VL-8B-Instruct-IQ4_XS.gguf") == "qwen3vl8binstruct"
    assert name_stem("mmproj-F16.gguf") == "" and name_stem("imatrix.gguf") == ""
    assert name_stem("Llama-3.1-8B-Instruct.imatrix.gguf") == "llama318binstruct"
    assert name_stem("Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf") == "qwen3235ba22b"
    assert name_stem("gpt-oss-20b-mxfp4.gguf") == "gptoss20b"
