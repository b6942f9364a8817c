#!/usr/bin/env python3
"""Hash whole models: `ggufx hash` (xxh3-128 per tensor, and sha256) against gguf-py's
`gguf_hash.py` (sha1/sha256/uuid per tensor, with and without per-layer hashes) and against
`xxh128sum` / `sha256sum` of the whole file, as whole processes, on a warm page cache.

    python benchmarks/bench_hash.py [FILE...]

Default files: the two real GGUFs of the test cache and, if present, the 4 GiB file that
bench_edit.py builds (benchmarks/.data/big-4g.gguf).
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import CACHE, run  # noqa: E402

DEFAULT = [
    CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
    CACHE / "gemma-3-270m-q4_k_m.gguf",
    HERE / ".data" / "big-4g.gguf",
]


def main() -> None:
    files = [Path(a) for a in sys.argv[1:]] or [p for p in DEFAULT if p.is_file()]
    py = sys.executable
    gx = str(Path(py).parent / "ggufx") if (Path(py).parent / "ggufx").exists() else "ggufx"
    rows = []
    for f in files:
        size = f.stat().st_size
        run(["cat", str(f)]) if size < (8 << 30) else None  # warm the page cache
        cmds = [
            ("ggufx hash (xxh3-128)", [gx, "hash", str(f)]),
            ("ggufx hash --algo sha256", [gx, "hash", "--algo", "sha256", str(f)]),
            ("gguf_hash.py", [py, "-m", "gguf.scripts.gguf_hash", str(f)]),
            ("gguf_hash.py --no-layer", [py, "-m", "gguf.scripts.gguf_hash", "--no-layer", str(f)]),
        ]
        for tool in ("xxh128sum", "sha256sum"):
            if shutil.which(tool):
                cmds.append((f"{tool} (whole file)", [tool, str(f)]))
        base = None
        for label, cmd in cmds:
            runs = 3 if size < (1 << 30) else 1
            samples = [run(cmd) for _ in range(runs)]
            wall = statistics.median(s[0] for s in samples)
            base = base or wall
            rows.append(
                (
                    f.name,
                    label,
                    f"{wall:,.2f}",
                    f"{size / wall / 2**30:,.2f}",
                    f"{max(s[1] for s in samples) / 2**20:,.0f}",
                    f"{wall / base:,.1f}x",
                )
            )
    from tabulate import tabulate

    print(
        tabulate(
            rows,
            headers=["file", "command", "wall s", "GiB/s", "peak RSS MiB", "time vs ggufx hash"],
            tablefmt="github",
            colalign=("left", "left", "right", "right", "right", "right"),
        )
    )


if __name__ == "__main__":
    main()
