#!/usr/bin/env python3
"""GPU memory estimates against llama.cpp's own figures: `ggufx mem` and the estimators users run today.

    python benchmarks/bench_memory.py [--runs N] [--only RUN_ID...]

Ground truth: the llama.cpp logs (CUDA, one and two H100s) in tests/fixtures/llamacpp-logs, read by
ggufx.analysis.memory.llamalog: every buffer llama.cpp allocated on a CUDA device (weights, KV cache,
recurrent state, output, compute), added up over the devices. The models are the header-only files
those runs loaded, rebuilt once into benchmarks/.data/holes by the fixtures' make_headers.py from the
two real GGUFs the test suite caches (the tensor data is a hole: full size, no disk).

Each tool answers "how much GPU memory" for the run's options, as far as it takes them:

* ggufx: `ggufx mem FILE --llama-args ARGS --gpus FREE,FREE --json`, the CUDA devices' buffers.
* gguf.js (@huggingface/gguf): `gguf-view -c N`'s "Memory usage estimation" TOTAL (weights + F16 KV +
  overhead; context length only), in bytes by gguf_js_estimate.mjs, checked against the CLI's print.
* node-llama-cpp: GgufInsights' model + context gpuVram (gpu layers, context, KV types, flash
  attention, sequences, batch), the heuristic its `inspect estimate` uses when it cannot simulate the
  load on a GPU build (gguf_js_estimate.mjs).
* modelinfo-cli (PyPI): `modelinfo FILE --context N --gpu [2x]H100 --strategy pp` (weights + F16 KV +
  600 MB per GPU).
* rule of thumb: file size + 2 x n_layer x n_ctx x n_kv_heads x head_dim x 2 bytes.

Install: `python3 -m venv /tmp/bench && /tmp/bench/bin/pip install . modelinfo-cli`, with node and npm on
PATH, then `/tmp/bench/bin/python benchmarks/bench_memory.py` (about 8 minutes with --runs 3).

Times: median wall time of the whole process as a user runs it (`ggufx mem`, `gguf-view`, `modelinfo`,
a node process for node-llama-cpp), N runs after a warm-up, warm page cache. The JavaScript peers are
installed from benchmarks/package.json into benchmarks/.data/node on first use (npm); a peer that is
missing is shown as n/a.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import CACHE, tool  # noqa: E402

LOGS = ROOT / "tests" / "fixtures" / "llamacpp-logs"
DATA = HERE / ".data"
HOLES = DATA / "holes"
NODE = DATA / "node"
HELPER = HERE / "gguf_js_estimate.mjs"
MiB = 1 << 20

# one and two GPUs, every model, partial offload, short to 256K contexts, q8_0/q4_0 caches, MoE
# experts on the CPU, the hybrid (Gated DeltaNet + attention) Qwen3.6 27B
RUNS = [
    "smol-ngl99-c4096",
    "smol-ngl99-c8192-q4_0",
    "gemma-ngl99-c4096",
    "gemma-ngl99-c32768",
    "gemma-ngl99-c32768-q8_0",
    "l1b-ngl99-c32768",
    "l1b-ngl99-c131072",
    "l1b-ngl99-c131072-q4_0",
    "l1b-ngl8-c32768",
    "l8b-ngl99-c4096",
    "l8b-ngl99-c32768",
    "l8b-ngl99-c131072",
    "l8b-ngl99-c131072-q8_0",
    "l8b-ngl99-c32768-ub2048",
    "l8b-ngl16-c32768",
    "2g-l8b-ngl99-c32768",
    "2g-l8b-ts3-1-c32768",
    "q27-ngl99-c32768",
    "q27-ngl99-c262144",
    "q27-ngl99-c262144-q4_0",
    "q27-ngl32-c32768",
    "2g-q27-ngl99-c262144",
    "moe-ngl99-c32768",
    "moe-ngl99-c262144",
    "moe-cpumoe-c32768",
    "moe-ncpumoe24-c32768",
    "2g-moe-ngl99-c262144",
    "2g-moe-cpumoe-c262144",
]
RECORDING_ONLY = {"-p": 1, "-n": 1, "-no-cnv": 0, "--no-warmup": 0, "-v": 0, "-fit": 1}


# ---------------------------------------------------------------- the models and the ground truth


def hole_models() -> dict[str, Path]:
    """The recorded runs' models (as tests/test_memory_logs.py builds them), cached in .data/holes."""
    manifest = [line.split("\t") for line in (LOGS / "headers-manifest.tsv").read_text().splitlines()]
    HOLES.mkdir(parents=True, exist_ok=True)
    models = {name: HOLES / f"{name}.gguf" for name, *_ in manifest}
    if all(p.is_file() and p.stat().st_size == int(size) for (name, size, *_), p in zip(manifest, models.values())):
        return models
    smollm2, gemma = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf", CACHE / "gemma-3-270m-q4_k_m.gguf"
    if not (smollm2.is_file() and gemma.is_file()):
        raise SystemExit(f"{CACHE}: the real GGUFs are missing (run the test suite once to fetch them)")
    print("building the header-only models in", HOLES, file=sys.stderr)
    cmd = [sys.executable, str(LOGS / "make_headers.py"), str(HOLES), "--smollm2", str(smollm2), "--gemma", str(gemma)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    for name, size, head, sha in manifest:
        hdr = (HOLES / f"{name}.hdr").read_bytes()
        if (len(hdr), hashlib.sha256(hdr).hexdigest()) != (int(head), sha):
            raise SystemExit(f"{name}: not the header llama.cpp loaded")
        with open(models[name], "wb") as f:
            f.write(hdr)
            f.truncate(int(size))
    return models


def llama_cpp_gpu_mib(rid: str) -> tuple[float, list[int]]:
    """llama.cpp's buffers on CUDA devices (MiB, as it printed them) and each GPU's free MiB at load."""
    from ggufx.analysis.memory.llamalog import parse_log

    log = parse_log((LOGS / f"{rid}.log").read_text())
    total = sum(mib for bufs in log.buffers.values() for buft, mib in bufs.items() if re.fullmatch(r"CUDA\d+", buft))
    return total, [free for name, free in log.devices if name.startswith("CUDA")]


def run_args(rid: str, runs: dict) -> tuple[str, list[str]]:
    """The run's model name and its llama.cpp options, less -m and the recording's own (-p hi -n 1 ...)."""
    argv = runs[rid]["args"].split()
    model, out, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            model, i = argv[i + 1].lstrip("@"), i + 2
        elif a in RECORDING_ONLY:
            i += 1 + RECORDING_ONLY[a]
        else:
            out.append(a)
            i += 1
    assert model, rid
    return model, out


# ---------------------------------------------------------------- the tools


def timed(cmd: list[str], runs: int) -> tuple[str, float]:
    """stdout of ``cmd`` and the median wall ms of ``runs`` runs after one warm-up (runs=0: one run, no time)."""
    walls, out = [], ""
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"failed: {' '.join(cmd)}\n{proc.stderr[-1500:]}")
        out = proc.stdout
        if i:
            walls.append(wall)
    return out, statistics.median(walls) * 1000 if walls else float("nan")


def options(args: list[str], n_layer_plus_output: int) -> dict:
    """The options the peers take, read by ggufx's own llama.cpp argument parser."""
    from ggufx.analysis.memory.llamaargs import parse_args

    a = parse_args(args)
    ngl = a.offload.n_gpu_layers
    c = a.context
    return {
        "ctx": c.n_ctx,
        "ngl": n_layer_plus_output if ngl < 0 else min(ngl, n_layer_plus_output),
        "ctk": c.cache_type_k,
        "ctv": c.cache_type_v,
        "fa": c.flash_attn != "off",
        "np": c.n_parallel,
        "ubatch": c.n_ubatch,
    }


def ggufx_estimate(model: Path, args: list[str], free: list[int], runs: int) -> tuple[float, float]:
    cmd = [tool("ggufx"), "mem", str(model), "--llama-args", " ".join(args), "--json"]
    cmd += ["--gpus", ",".join(f"{f}MiB" for f in free)]
    out, ms = timed(cmd, runs)
    d = json.loads(out)
    gpu = sum(b["bytes"] for b in d["buffers"] if re.fullmatch(r"CUDA\d+", b["buft"]))
    return gpu / MiB, ms


def npm_peers() -> Path | None:
    """benchmarks/package.json installed in .data/node (once), or None without node/npm."""
    modules = NODE / "node_modules"
    want = (HERE / "package.json").read_text()
    stamp = NODE / "package.json"
    if modules.is_dir() and stamp.is_file() and stamp.read_text() == want:
        return modules
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    print("installing benchmarks/package.json into", NODE, file=sys.stderr)
    NODE.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)
    cmd = ["npm", "install", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    if subprocess.run(cmd, cwd=NODE, stdout=subprocess.DEVNULL).returncode != 0:
        stamp.unlink()
        return None
    return modules


def node_estimate(modules: Path, which: str, model: Path, opts: dict, runs: int) -> tuple[float, float, dict]:
    req = json.dumps({"tool": which, "model": str(model), **opts})
    out, ms = timed(["node", str(HELPER), str(modules), req], runs)
    d = json.loads(out)
    return d["gpu_bytes"] / MiB, ms, d


def gguf_view_check(modules: Path, model: Path, ctx: int, helper_bytes: float, runs: int) -> float:
    """Time `gguf-view -c N` and check that its printed TOTAL is the helper's figure."""
    out, ms = timed(
        ["node", str(modules / "@huggingface" / "gguf" / "dist" / "cli.js"), "-c", str(ctx), str(model)], runs
    )
    m = re.search(r"TOTAL\s*\|\s*([\d.]+) GB", out)
    if not m or abs(float(m.group(1)) - helper_bytes / 1e9) > 0.0051:
        raise SystemExit(f"gguf-view printed {m and m.group(0)!r}, the helper {helper_bytes / 1e9:.4f} GB")
    return ms


def modelinfo_estimate(model: Path, ctx: int, n_gpus: int, runs: int) -> tuple[float, float] | None:
    try:
        from modelinfo.cli import analyze_model
    except ImportError:
        return None
    gpu = "H100" if n_gpus == 1 else f"{n_gpus}xH100"
    info = analyze_model(str(model), ctx, gpu_count=n_gpus, strategy="pp", gpu_vram_gb=80.0 * n_gpus)
    _, ms = timed([tool("modelinfo"), str(model), "--context", str(ctx), "--gpu", gpu, "--strategy", "pp"], runs)
    return info["footprint"]["total_memory_bytes"] / MiB, ms


def rule_of_thumb(model: Path, ctx: int) -> float:
    import ggufx

    m = ggufx.open(model)
    md, a = m.metadata, m.architecture
    n_head = md.get(f"{a}.attention.head_count")
    kv_heads = md.get(f"{a}.attention.head_count_kv") or n_head
    kv_heads = max(kv_heads) if isinstance(kv_heads, list) else kv_heads
    head_dim = md.get(f"{a}.attention.key_length") or md.get(f"{a}.embedding_length") // n_head
    return (model.stat().st_size + 2 * md.get(f"{a}.block_count") * ctx * kv_heads * head_dim * 2) / MiB


# ---------------------------------------------------------------- the table


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except (OSError, IndexError):
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per estimate (after one warm-up)")
    ap.add_argument("--only", nargs="*", help="run ids of tests/fixtures/llamacpp-logs/runs.json")
    args = ap.parse_args()
    from tabulate import tabulate

    import ggufx

    recorded = json.loads((LOGS / "runs.json").read_text())
    models = hole_models()
    modules = npm_peers()
    tools = ["ggufx", "gguf.js", "node-llama-cpp", "modelinfo", "rule of thumb"]
    errs: dict[str, list[float]] = {t: [] for t in tools}
    times: dict[str, list[float]] = {t: [] for t in tools}
    rows = []
    for rid in args.only or RUNS:
        name, largs = run_args(rid, recorded)
        path = models[name]
        truth, free = llama_cpp_gpu_mib(rid)
        n_gpus = int(recorded[rid]["gpus"])
        m = ggufx.open(path)
        opts = options(largs, m.metadata.get(f"{m.architecture}.block_count") + 1)
        got: dict[str, tuple[float | None, float | None]] = {}
        got["ggufx"] = ggufx_estimate(path, largs, free[:n_gpus], args.runs)
        if modules:
            mib, _, d = node_estimate(modules, "gguf.js", path, opts, 0)
            got["gguf.js"] = (mib, gguf_view_check(modules, path, opts["ctx"], d["gpu_bytes"], args.runs))
            mib, ms, _ = node_estimate(modules, "node-llama-cpp", path, opts, args.runs)
            got["node-llama-cpp"] = (mib, ms)
        got["modelinfo"] = modelinfo_estimate(path, opts["ctx"], n_gpus, args.runs) or (None, None)
        got["rule of thumb"] = (rule_of_thumb(path, opts["ctx"]), None)
        row = [rid, f"{truth:,.0f}"]
        for t in tools:
            mib, ms = got.get(t, (None, None))
            if mib is None:
                row += ["n/a", "", ""] if t != "rule of thumb" else ["n/a", ""]
                continue
            err = (mib - truth) / truth * 100
            errs[t].append(abs(err))
            row += [f"{mib:,.0f}", f"{err:+.1f}"]
            if t != "rule of thumb":
                times[t].append(ms)
                row.append(f"{ms:,.0f}")
        rows.append(row)
        print(rid, "done", file=sys.stderr)
    summary = []
    for label, fn in (("mean", statistics.mean), ("median", statistics.median), ("max", max)):
        row = [f"|error| {label}", ""]
        for t in tools:
            e, ms = errs[t], times[t]
            cells = [f"{fn(e):.1f}" if e else "n/a"]
            cells += [f"{fn(ms):,.0f}"] if t != "rule of thumb" and ms else ([""] if t != "rule of thumb" else [])
            row += [""] + cells
        summary.append(row)
    within = ["within 5%", ""]
    for t in tools:
        within += ["", f"{sum(e <= 5 for e in errs[t])}/{len(errs[t])}"] + ([""] if t != "rule of thumb" else [])
    summary.append(within)
    headers = ["run", "llama.cpp MiB"]
    for t in tools:
        short = {"node-llama-cpp": "nlc", "rule of thumb": "rule"}.get(t, t)
        headers += [f"{short} MiB", "err %"] + (["ms"] if t != "rule of thumb" else [])
    py = sys.version.split()[0]
    vers = {
        "ggufx": version([tool("ggufx"), "--version"]).replace("ggufx, version ", ""),
        "gguf.js": "@huggingface/gguf " + _npm_version(modules, "@huggingface/gguf"),
        "node-llama-cpp": "node-llama-cpp " + _npm_version(modules, "node-llama-cpp"),
        "modelinfo": "modelinfo-cli " + _pip_version("modelinfo-cli"),
        "node": version(["node", "--version"]),
    }
    print(f"python {py}, {os.cpu_count()} cores; median of {args.runs} runs per estimate (whole process, ms)")
    print("; ".join(f"{k}: {v}" for k, v in vers.items()))
    print("MiB = GPU memory (CUDA buffers of every GPU, added up); err % = (tool - llama.cpp) / llama.cpp")
    print(
        "what each takes: ggufx every option; nlc (node-llama-cpp) gpu layers, context, cache types, -fa, -np, "
        "-ub; modelinfo context and GPU count; gguf.js and rule of thumb the context only\n"
    )
    print(tabulate(rows + summary, headers=headers, tablefmt="github", disable_numparse=True))


def _npm_version(modules: Path | None, pkg: str) -> str:
    try:
        return json.loads((modules / pkg / "package.json").read_text())["version"]  # type: ignore[operator]
    except (OSError, TypeError, KeyError, ValueError):
        return "n/a"


def _pip_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "n/a"


if __name__ == "__main__":
    main()
