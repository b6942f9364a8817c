"""Companion files against llama.cpp's own tools (marker ``llamacpp``): an imatrix made by
llama-imatrix is read by ``ggufx imatrix`` with the per-tensor figure llama-imatrix's own
``--show-statistics`` prints; LoRA adapters and control vectors written with gguf-py, a projector
beside a model of another width and draft models with the same or another vocabulary are accepted
or refused by llama.cpp exactly as ``ggufx check`` says."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.support import CliRun

from . import companion_files as cf
from .llamacpp_logs import RUNS

pytestmark = pytest.mark.llamacpp

WORDS = (
    "the river ran past old mills and quiet farms while children learned to count stones by the water "
    "and merchants argued about the price of wool in small towns across the valley before winter came"
).split()


def _prose(path: Path) -> Path:
    rng = random.Random(17)
    lines = [" ".join(rng.choice(WORDS) for _ in range(16)).capitalize() + "." for _ in range(120)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)


def test_imatrix_from_llama_imatrix_agrees_with_its_statistics(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    text = _prose(tmp_path / "prose.txt")
    out = tmp_path / "imatrix.gguf"
    p = _run(
        [str(llama_bin / "llama-imatrix"), "-m", str(smollm2_path), "-f", str(text), "-o", str(out)]
        + ["--chunks", "2", "-c", "128", "-t", "2"],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(cli("info", "--json", str(out)).stdout)
    assert info["kind"] == "imatrix"
    assert (info["companion"]["chunk_count"], info["companion"]["chunk_size"]) == (2, 128)
    assert info["companion"]["datasets"] == [str(text)]
    res = json.loads(cli("imatrix", "--json", str(out), "--model", str(smollm2_path)).stdout)
    ours = {t["name"]: t for t in res["tensors"]}
    # SmolLM2 has 30 layers of 7 matrices; llama-imatrix skips output.weight without --process-output
    assert len(ours) == res["count"] == 210
    assert res["missing_in_model"] == []

    stats = _run(
        [str(llama_bin / "llama-imatrix"), "-m", str(smollm2_path), "--in-file", str(out), "--show-statistics"],
        tmp_path,
    )
    assert stats.returncode == 0, stats.stderr[-2000:]
    theirs: dict[str, float] = {}
    for line in stats.stdout.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 4 and cols[1].startswith("blk."):
            theirs[cols[1]] = float(cols[3].split()[0])  # the "∑ E[A²]" column, printed %.4f
    assert set(theirs) == set(ours)
    for name, printed in theirs.items():
        assert f"{ours[name]['sum_sq']:.4f}" == f"{printed:.4f}", name
        assert ours[name]["importance"] == pytest.approx(ours[name]["sum_sq"] / ours[name]["elements"], rel=1e-12)

    r = cli("check", str(smollm2_path), "--imatrix", str(out))
    assert r.exit_code == 0, r.output


SMOL_TARGETS = {
    "blk.0.attn_q.weight": (576, 576),
    "blk.0.ffn_up.weight": (576, 1536),
    "blk.3.attn_v.weight": (576, 192),
}


def _completion(llama_bin: Path, model: Path, lora: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        [str(llama_bin / "llama-completion"), "-m", str(model), "--lora", str(lora)]
        + ["-n", "1", "-p", "hi", "-t", "2", "-no-cnv"],
        lora.parent,
    )


def test_lora_adapter_loads_in_llama_cpp_and_passes_check(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    lora = cf.write_lora(tmp_path / "adapter.gguf", SMOL_TARGETS, rank=8, alpha=16.0)
    p = _completion(llama_bin, smollm2_path, lora)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(cli("info", "--json", str(lora)).stdout)
    assert info["kind"] == "adapter"
    assert (info["companion"]["rank"], info["companion"]["alpha"], info["companion"]["layers"]) == (8, 16.0, [0, 3])
    r = cli("check", str(smollm2_path), "--lora", str(lora))
    assert r.exit_code == 0, r.output


def test_mismatched_lora_refused_by_llama_cpp_and_by_check(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    bad = dict(SMOL_TARGETS, **{"blk.0.ffn_up.weight": (576, 1024)})
    lora = cf.write_lora(tmp_path / "adapter.gguf", bad, rank=8, alpha=16.0)
    p = _completion(llama_bin, smollm2_path, lora)
    assert p.returncode != 0
    assert "tensor 'blk.0.ffn_up.weight' has incorrect shape" in p.stderr
    r = cli("check", str(smollm2_path), "--lora", str(lora))
    assert r.exit_code == 1
    assert (
        "companions.lora: " + str(lora) + ": 'blk.0.ffn_up.weight' is 576 x 1536 but its lora_a is 576 x 8 and "
        "lora_b 8 x 1024 (expected lora_a [576, r], lora_b [r, 1536])"
    ) in r.stdout


def test_control_vector_applied_or_refused_as_check_says(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    """llama.cpp applies a control vector of the model's width (576 for SmolLM2) and refuses one
    of another width; ``check --control-vector`` says the same."""
    for n_embd, ok in ((576, True), (64, False)):
        cvec = cf.write_control_vector(tmp_path / f"cvec{n_embd}.gguf", n_embd=n_embd, layers=3)
        p = _run(
            [str(llama_bin / "llama-completion"), "-m", str(smollm2_path), "--control-vector", str(cvec)]
            + ["-n", "1", "-p", "hi", "-t", "2", "-no-cnv"],
            tmp_path,
        )
        refused = "control vector n_embd does not match model" in p.stderr
        assert refused is not ok, p.stderr[-2000:]
        r = cli("check", str(smollm2_path), "--control-vector", str(cvec))
        assert r.exit_code == (0 if ok else 1), r.output
        if not ok:
            assert "its directions have 64 values but the model's embedding is 576" in r.stdout


def test_projector_of_another_width_refused_by_mtmd_and_by_check(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, hole_models: dict[str, Path], tmp_path: Path
) -> None:
    """The Qwen3.6 27B projector (output 5120) beside SmolLM2 (576): libmtmd refuses the pair and
    check --mmproj names the same two widths. Beside its own model llama.cpp loaded it (recorded
    run q27-mmproj-cpu-c32768, exit 0), and check accepts that pair."""
    mm = hole_models["mmproj-qwen36-27b"]
    p = _run(
        [str(llama_bin / "llama-mtmd-cli"), "-m", str(smollm2_path), "--mmproj", str(mm)]
        + ["-p", "hi", "-n", "1", "-t", "2", "--no-warmup", "-v"],
        tmp_path,
    )
    assert p.returncode != 0
    assert "mismatch between text model (n_embd = 576) and mmproj (n_embd = 5120)" in p.stderr + p.stdout
    r = cli("check", str(smollm2_path), "--mmproj", str(mm))
    assert r.exit_code == 1 and "the projector projects to 5120 but the model's embedding is 576" in r.stdout
    assert RUNS["q27-mmproj-cpu-c32768"]["exit_status"] == 0
    assert cli("check", str(hole_models["qwen36-27b"]), "--mmproj", str(mm)).exit_code == 0


def _server_speculation(llama_bin: Path, model: Path, draft: Path, cwd: Path) -> str:
    """llama-server's log up to "model loaded" with ``draft`` as its draft model (``--spec-type
    draft-simple``, which runs llama.cpp's vocabulary compatibility check); the server is stopped."""
    cmd = [str(llama_bin / "llama-server"), "-m", str(model), "-md", str(draft), "--spec-type", "draft-simple"]
    cmd += ["--port", "0", "-t", "2", "-c", "512", "--no-warmup", "-v"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace"))
            if "model loaded" in lines[-1] or "exiting due to model loading error" in lines[-1]:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return "".join(lines)


def test_draft_model_accepted_or_refused_as_check_says(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, gemma_path: Path, tmp_path: Path
) -> None:
    """SmolLM2 drafting for itself: llama-server sets speculation up and check passes; Gemma 3's
    vocabulary for SmolLM2: llama-server's compatibility check refuses it, as check does."""
    log = _server_speculation(llama_bin, smollm2_path, smollm2_path, tmp_path)
    assert "speculative decoding context initialized" in log, log[-3000:]
    assert cli("check", str(smollm2_path), "--draft", str(smollm2_path)).exit_code == 0
    log = _server_speculation(llama_bin, smollm2_path, gemma_path, tmp_path)
    assert "the target and draft vocabs are not compatible" in log, log[-3000:]
    assert "vocab_type_dft = 1 while vocab_type_tgt = 2" in log  # LLAMA_VOCAB_TYPE_SPM, _BPE
    r = cli("check", str(smollm2_path), "--draft", str(gemma_path))
    assert r.exit_code == 1 and "the draft model's vocabulary type is 'llama', the model's 'gpt2'" in r.stdout


def test_imatrix_coverage_as_llama_quantize_requires_it(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    """llama-quantize to IQ2_XXS (an importance-dependent type) accepts an imatrix covering every
    weight check --imatrix asks for and refuses one missing blk.3.ffn_down.weight, which check names."""
    import ggufx
    from ggufx.analysis.roles import is_quantizable_weight
    from ggufx.analysis.summary import ggml_n_dims

    model = ggufx.open(str(smollm2_path))
    wanted = {
        t.name: ([1.0] * t.shape[0], 1.0)
        for t in model.tensors
        if is_quantizable_weight(t.name, ggml_n_dims(t.shape)) and t.name not in ("token_embd.weight", "output.weight")
    }
    partial = {k: v for k, v in wanted.items() if k != "blk.3.ffn_down.weight"}
    for name, entries, ok in (("full", wanted, True), ("partial", partial, False)):
        im = cf.write_imatrix(tmp_path / f"{name}.gguf", entries)
        p = _run(
            [str(llama_bin / "llama-quantize"), "--allow-requantize", "--imatrix", str(im), str(smollm2_path)]
            + [str(tmp_path / f"out-{name}.gguf"), "IQ2_XXS", "2"],
            tmp_path,
        )
        assert (p.returncode == 0) is ok, p.stdout[-2000:] + p.stderr[-2000:]
        r = cli("check", str(smollm2_path), "--imatrix", str(im))
        assert r.exit_code == (0 if ok else 1), r.output
        if not ok:
            assert "Missing importance matrix for tensor blk.3.ffn_down.weight" in p.stdout + p.stderr
            assert "1 quantizable tensor(s) have no importance data: blk.3.ffn_down.weight" in r.stdout


def test_projector_as_the_model_refused_by_llama_cpp_and_by_mem(cli: CliRun, llama_bin: Path, tmp_path: Path) -> None:
    """A projector given as the model: llama.cpp stops after its hyper-parameters with "CLIP cannot be
    used as main model, use it with --mmproj instead"; ``ggufx mem`` refuses it with the same words
    (exit 2), where it used to ask for a ``clip.block_count`` no projector has."""
    mmproj = cf.write_projector(tmp_path / "mmproj.gguf")
    words = "CLIP cannot be used as main model, use it with --mmproj instead"
    # llama.cpp's logger is a leaked singleton whose worker thread may not have written the last lines when
    # the process exits (common/log.cpp:453-457): about half the runs of this early exit print nothing. Every
    # run must fail; one of a few dozen must say why.
    said = []
    for _ in range(40):
        cmd = [str(llama_bin / "llama-completion"), "-m", str(mmproj), "-n", "1", "-p", "hi", "-no-cnv", "-fit", "off"]
        p = _run(cmd, tmp_path)
        assert p.returncode == 1, p.stderr[-2000:]
        said = [line for line in p.stderr.splitlines() if "error loading model" in line]
        if said:
            break
    assert said and words in said[0], said
    r = cli("mem", str(mmproj), "-c", "512")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr and "offset 24" in r.stderr
