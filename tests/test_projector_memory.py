"""The projector's compute buffers (ggufx.analysis.memory.graph.projector) against llama.cpp's own logs.

Every llama-mtmd-cli / llama-server run with ``--mmproj`` recorded under tests/fixtures/llamacpp-logs (CUDA)
and every CPU run under tests/fixtures/projector-logs (projector types written by make_projectors.py there)
prints ``reserve_compute_meta: <buft> compute buffer size = X MiB``; ggufx must give the same MiB, per buffer
type, to the 0.01 MiB llama.cpp prints."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.memory.graph.projector import projector_buffers, projector_unsupported
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.errors import InputError

from .llamacpp_logs import LOGS, RUNS

PROJ_LOGS = Path(__file__).resolve().parent / "fixtures" / "projector-logs"


def _runs_with_projector() -> list[tuple[Path, str]]:
    cuda = [(LOGS / f"{rid}.log", r["args"]) for rid, r in sorted(RUNS.items()) if "--mmproj" in r["args"]]
    cpu = []
    for log in sorted(PROJ_LOGS.glob("*.log")):
        command = log.read_text().splitlines()[1]
        cpu.append((log, command.split(" mtmd ", 1)[1]))
    return cuda + cpu


RECORDED = _runs_with_projector()


@pytest.fixture(scope="session")
def projector_models(hole_models: dict[str, Path]) -> dict[str, Path]:
    """The text models and every recorded projector (tests/llamacpp_logs.py writes them)."""
    return hole_models


def _options(args: str) -> dict:
    """The llama.cpp options that size the projector's buffers, as the recorded command gave them."""
    words = shlex.split(args)

    def value(flag: str) -> str | None:
        return words[words.index(flag) + 1] if flag in words else None

    cpu = "--no-mmproj-offload" in words or value("-dev") == "none"
    imax, imin = value("--image-max-tokens"), value("--image-min-tokens")
    return {
        "mmproj": value("--mmproj").lstrip("@"),  # type: ignore[union-attr]
        "gpu": None if cpu else "CUDA0",
        "flash_attn": value("-fa") or "auto",
        "image_max_tokens": int(imax) if imax else None,
        "image_min_tokens": int(imin) if imin else None,
    }


@pytest.mark.parametrize(("log_path", "args"), RECORDED, ids=[p.stem for p, _ in RECORDED])
def test_projector_compute_matches_llamacpp(projector_models: dict[str, Path], log_path: Path, args: str) -> None:
    log = parse_log(log_path.read_text())
    theirs = {k: v for k, v in log.projector.items() if k != "weights"}
    assert theirs, f"{log_path.name}: no reserve_compute_meta line"
    opts = _options(args)
    mm = ggufx.open(projector_models[opts.pop("mmproj")])
    mine = {b.buft: round(b.bytes / MiB, 2) for b in projector_buffers(mm, **opts)}
    assert mine == theirs
    assert all(not b.exact and b.kind == "projector_compute" for b in projector_buffers(mm, **opts))


def test_every_recorded_projector_type_is_covered() -> None:
    kinds = set()
    for log_path, _ in RECORDED:
        for line in log_path.read_text().splitlines():
            if "load_hparams: projector:" in line:
                kinds.add(line.split()[-1])
    assert kinds >= {"qwen3vl_merger", "qwen2vl_merger", "qwen2.5vl_merger", "gemma3", "idefics3", "mlp", "pixtral"}


def test_flash_attention_off_is_the_kq_matrix(projector_models: dict[str, Path]) -> None:
    """-fa off: llama.cpp's 4657.81 MiB (q27-mmproj-faoff) against 248.10 with flash attention."""
    mm = ggufx.open(projector_models["mmproj-qwen36-27b"])
    off = projector_buffers(mm, "CUDA0", flash_attn="off")[0].bytes / MiB
    on = projector_buffers(mm, "CUDA0", flash_attn=True)[0].bytes / MiB
    assert (round(off, 2), round(on, 2)) == (4657.81, 248.10)


def test_not_a_projector_is_refused(projector_models: dict[str, Path]) -> None:
    model = ggufx.open(projector_models["smollm2-135m"])
    assert projector_unsupported(model) == "the file has no clip.projector_type"
    with pytest.raises(InputError, match="no clip.projector_type"):
        projector_buffers(model, "CUDA0")


def test_manifest_lists_every_projector() -> None:
    names = {line.split("\t")[0] for line in (PROJ_LOGS / "headers-manifest.tsv").read_text().splitlines()}
    used = {_options(a)["mmproj"] for p, a in RECORDED if p.parent == PROJ_LOGS}
    assert used <= names | {"mmproj-qwen36-27b"}
