"""A small model of tests/fixtures/llamacpp-logs-cpu grown to more layers (for the shortened replay, which
needs repeated blocks of layers: the four-layer models have none): layer 0 as it is, then the model's last
``period`` layers repeated, their per-layer keys (arrays of ``block_count`` entries) and tensors alike."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import ggufx
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import CPU_LOGS


def grown_model(name: str, n_layer: int, period: int, out: Path, smollm2: Path) -> Path:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = json.loads(json.dumps(MODELS[name]))
    kv = spec["kv"]
    old = kv["block_count"]
    kv["block_count"] = n_layer

    def like(il: int) -> int:  # the layer of the small model that layer il repeats
        return 0 if il == 0 else old - period + (il - 1) % period

    for k, v in list(kv.items()):
        if isinstance(v, list) and len(v) == old:
            kv[k] = [v[like(il)] for il in range(n_layer)]
    tensors = []
    for t in json.loads((CPU_LOGS / "tensors.json").read_text())[name]:
        m = re.fullmatch(r"blk\.(\d+)\.(.*)", t[0])
        if m is None:
            tensors.append(t)
            continue
        tensors += [[f"blk.{il}.{m.group(2)}", *t[1:]] for il in range(n_layer) if like(il) == int(m.group(1))]
    path = out / f"{name}-{n_layer}.gguf"
    header(path, spec, tensors, smollm2)
    return path


def assert_grown_shortcut_is_whole(path: Path) -> None:
    """A grown model is built, and its shortened replay, where it is taken, allocates as the whole one: on
    the CPU (with and without flash attention, one and three sequences) and with the layers on a GPU or split."""
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) is None
    gpu = [Device("CUDA0", 80 << 30)]
    for args, devices in (
        ("-c 8192", []),
        ("-c 4096 -fa off -np 3", []),
        ("-ngl 99 -c 8192", gpu),
        ("-ngl 20 -c 8192", gpu),
    ):
        a = parse_args("-m x " + args)
        sp = breakdown(model, devices, a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, devices, a.offload, sp, whole=True)
        assert graphsim.simulate(model, devices, a.offload, sp) == whole and all(v > 0 for v in whole.values())
