"""The generic decoder estimate's error: every recorded llama.cpp run of an architecture that has a graph
builder, replayed with the builder switched off (``breakdown(..., builder=False)``), each compute buffer
compared with llama.cpp's.

    python -m tests.estimate_error            # the table (Markdown), from the repository root

It needs the header-only models of tests/fixtures/llamacpp-logs (rebuilt from the two real test GGUFs in
~/.cache/ggufx-test-models, as the tests do). ``tests/test_estimate_error.py`` checks the table's rows.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log

from .llamacpp_logs import LOGS, RUNS, devices_of


@dataclass(frozen=True)
class Row:
    arch: str
    runs: int
    buffers: int
    median: float  # |estimate - llama.cpp| / llama.cpp, in percent
    p90: float
    worst: float
    worst_run: str
    under: int  # buffers the estimate puts below llama.cpp's


def measured_runs() -> list[str]:
    return sorted(
        rid
        for rid, r in RUNS.items()
        if r["tool"] in ("completion", "server", "mtmd") and r["exit_status"] == 0 and not rid.startswith("fiton")
    )


def errors(models: dict[str, Path]) -> dict[str, list[tuple[str, str, float]]]:
    """Per architecture: (run, buffer type, relative error) of every compute buffer llama.cpp logged."""
    out: dict[str, list[tuple[str, str, float]]] = {}
    opened: dict[str, ggufx.GGUFModel] = {}
    for rid in measured_runs():
        run = RUNS[rid]
        text = (LOGS / f"{rid}.log").read_text()
        log = parse_log(text)
        args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
        if "-sm tensor" in run["args"] or "compute" not in log.buffers:
            continue  # -sm tensor: left out of the table (its Meta graph is a one-GPU graph, measured on those runs)
        model = opened.setdefault(args.model, ggufx.open(models[args.model]))
        if builder_of(model.architecture) is None:
            continue  # no builder to switch off: these runs are the estimate already (test_memory_logs)
        bd = breakdown(model, devices_of(run, log.devices), args.offload, args.context, builder=False)
        ours = bd.by_kind("compute")
        for buft, mib in log.buffers["compute"].items():
            if mib < 1:
                continue
            est = ours.get(buft, 0) / MiB
            out.setdefault(model.architecture or "", []).append((rid, buft, (est - mib) / mib))
    return out


CPU_LOGS = LOGS.parent / "llamacpp-logs-cpu"


def cpu_errors(smollm2: Path, out: Path) -> dict[str, list[tuple[str, str, float]]]:
    """The same over tests/fixtures/llamacpp-logs-cpu (CPU build), every builder switched off."""
    import json
    from dataclasses import replace

    sys.path.insert(0, str(CPU_LOGS))
    from make_arch_headers import header
    from models import MODELS

    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())
    res: dict[str, list[tuple[str, str, float]]] = {}
    made: dict[str, Path] = {}
    for line in (CPU_LOGS / "matrix").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rid, name, args = line.split("\t")
        f = CPU_LOGS / f"{rid}.log"
        if not f.exists():
            continue
        log = parse_log(f.read_text())
        if "compute" not in log.buffers:
            continue
        if name not in made:
            made[name] = out / f"{name}.gguf"
            header(made[name], MODELS[name], tensors[name], smollm2)
        parsed = parse_args("-m x " + args.replace("--no-repack", ""))
        offload = replace(parsed.offload, repack="--no-repack" not in args)
        model = ggufx.open(made[name])
        ours = breakdown(model, [], offload, parsed.context, builder=False).by_kind("compute")
        for buft, mib in log.buffers["compute"].items():
            est = ours.get(buft, 0) / MiB
            res.setdefault(name, []).append((rid, buft, (est - mib) / mib))
    return res


def table(errs: dict[str, list[tuple[str, str, float]]]) -> list[Row]:
    rows = []
    for arch, items in sorted(errs.items()):
        rel = sorted(abs(e) * 100 for _, _, e in items)
        worst = max(items, key=lambda x: abs(x[2]))
        rows.append(
            Row(
                arch,
                len({r for r, _, _ in items}),
                len(items),
                statistics.median(rel),
                rel[min(len(rel) - 1, int(0.9 * len(rel)))],
                abs(worst[2]) * 100,
                f"{worst[0]} ({worst[1]})",
                sum(1 for _, _, e in items if e < 0),
            )
        )
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| architecture | runs | compute buffers | median error | 90th percentile | worst | worst run | below llama.cpp |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.arch} | {r.runs} | {r.buffers} | {r.median:.1f}% | {r.p90:.1f}% | {r.worst:.1f}% | "
            f"{r.worst_run} | {r.under} |"
        )
    return "\n".join(lines)


def main() -> None:
    from .llamacpp_logs import _cpu_models, _write_holes

    home = Path.home() / ".cache" / "ggufx-test-models"
    with tempfile.TemporaryDirectory() as d:
        models = _write_holes(
            LOGS / "make_headers.py",
            LOGS / "headers-manifest.tsv",
            Path(d),
            "--smollm2",
            str(home / "SmolLM2-135M-Instruct.Q4_1.gguf"),
            "--gemma",
            str(home / "gemma-3-270m-q4_k_m.gguf"),
        )
        models.update(_cpu_models(Path(d), home / "SmolLM2-135M-Instruct.Q4_1.gguf"))
        print("Architectures with a graph builder, the builder switched off (CUDA and CPU runs):\n")
        print(markdown(table(errors(models))))
        print(
            "\nThe small models of every family (CPU build, tests/fixtures/llamacpp-logs-cpu), builders switched off:\n"
        )
        print(markdown(table(cpu_errors(home / "SmolLM2-135M-Instruct.Q4_1.gguf", Path(d)))))


if __name__ == "__main__":
    sys.exit(main())
