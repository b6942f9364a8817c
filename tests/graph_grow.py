"""A small model of tests/fixtures/llamacpp-logs-cpu grown to more layers (for the shortened replay, which
needs repeated blocks of layers: the four-layer models have none): layer 0 as it is, then the model's last
``period`` layers repeated, their per-layer keys (arrays of ``block_count`` entries) and tensors alike."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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
