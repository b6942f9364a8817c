"""``ggufx pick``'s promise against a GPU: the command lines it printed for one 24 GiB GPU at 65,536
tokens (gpt-oss-20b entirely on the GPU; GLM-4.5-Air and Qwen3-Next-80B-A3B with layers and experts on
the host, as llama.cpp's --fit decides), loaded by llama-server's CUDA build on an H100
(tests/fixtures/llamacpp-logs, runs ``pick-*``). The same pick, run here on the same header-only
models, prints the same command line, and what each row says the command allocates on the GPU (weights,
KV cache and state, compute) and on the host is what llama-server allocated."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ggufx.analysis.memory.llamalog import parse_log
from tests.support import CliRun

from .llamacpp_logs import LOGS, RUNS

PICKS = sorted(r for r in RUNS if r.startswith("pick-"))
MiB = 1 << 20


def test_the_picked_commands_were_loaded() -> None:
    assert len(PICKS) == 3 and all(RUNS[r]["tool"] == "server" and RUNS[r]["exit_status"] == 0 for r in PICKS)


@pytest.mark.parametrize("rid", PICKS)
def test_the_row_is_what_llama_server_allocated(
    rid: str, cli: CliRun, hole_models: dict[str, Path], tmp_path: Path
) -> None:
    name = RUNS[rid]["model"]
    (tmp_path / f"{name}.gguf").symlink_to(hole_models[name])
    r = cli("pick", str(tmp_path / f"{name}.gguf"), "--gpus", "24GiB", "-c", "65536", "--json")
    assert r.exit_code == 0, r.stderr
    (row,) = json.loads(r.stdout)["models"]
    argv = [a if a != str(tmp_path / f"{name}.gguf") else f"@{name}" for a in row["command"][1:]]
    assert argv + ["-v"] == shlex.split(RUNS[rid]["args"])  # the words llama-server was given
    log = parse_log((LOGS / f"{rid}.log").read_text())
    (gpu,) = row["gpus"]
    assert gpu["name"] == "CUDA0"
    assert round(gpu["model"] / MiB, 2) == log.buffers["model"]["CUDA0"]
    context = log.buffers["kv"].get("CUDA0", 0) + log.buffers.get("recurrent", {}).get("CUDA0", 0)
    assert round(gpu["context"] / MiB, 2) == round(context, 2)
    assert round(gpu["compute"] / MiB, 4) == log.buffers["compute"]["CUDA0"]
    host = sum(v for kind in log.buffers.values() for buft, v in kind.items() if not buft.startswith("CUDA0"))
    n_host = sum(1 for kind in log.buffers.values() for buft in kind if not buft.startswith("CUDA0"))
    assert abs(row["host_bytes"] / MiB - host) <= 0.005 * n_host + 1e-9, (row["host_bytes"] / MiB, log.buffers)
