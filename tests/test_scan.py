"""Scanning folders, a fake Hugging Face cache and a fake Ollama store built in tmp."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ggufx.analysis.scan import scan

from .conftest import FIXTURES, CliRun


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
