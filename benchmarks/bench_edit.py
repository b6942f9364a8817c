#!/usr/bin/env python3
"""Replace `tokenizer.chat_template` in a big GGUF: ggufx (in place, insert-range, forced streamed
rewrite) against gguf-py's `gguf-new-metadata` and against `cp` of the same file, as whole processes.

    python benchmarks/bench_edit.py [--size-gib 4] [--dir DIR]

The test file (built once, kept in DIR, default benchmarks/.data/) has the real metadata of the
Gemma 3 270M file from the test cache (262,144-token vocabulary, so the header is ~6 MB, as in
big models) followed by F16 tensors of 16384 x 16384 elements (512 MiB each) filled with a
non-repeating byte pattern, so nothing is sparse and no copy can be skipped. Everything runs on
a warm page cache; the same file and conditions for every tool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from common import CACHE, tool  # noqa: E402

import ggufx  # noqa: E402
from ggufx.format.encode import encode_string  # noqa: E402

TEMPLATE_A = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE_B = TEMPLATE_A.replace("<|im_start|>", "<start_of_turn>").replace("<|im_end|>", "<end_of_turn>")


def build_big(path: Path, size_gib: int) -> None:
    src = CACHE / "gemma-3-270m-q4_k_m.gguf"
    if not src.is_file():
        raise SystemExit(f"{src} missing: run the test suite once to fetch the real files")
    m = ggufx.open(src)
    h = m.header
    kvs = bytes(h.buf[h.kv_offset : h.tensor_info_offset])
    n_tensors = size_gib * 2
    ne = 16384
    nbytes = ne * ne * 2
    tinfo = b"".join(
        encode_string("<", f"blk.{i}.ffn_up.weight")
        + struct.pack("<I", 2)
        + struct.pack("<qq", ne, ne)
        + struct.pack("<iQ", 1, i * nbytes)
        for i in range(n_tensors)
    )
    head = b"GGUF" + struct.pack("<Iqq", 3, n_tensors, len(h.kvs)) + kvs + tinfo
    head += bytes(-len(head) % 32)
    block = bytearray(os.urandom(1 << 20))
    tmp = path.with_suffix(".building")
    with open(tmp, "wb") as f:
        f.write(head)
        for i in range(n_tensors * nbytes >> 20):
            block[:8] = struct.pack("<Q", i)  # every MiB differs
            f.write(block)
    tmp.replace(path)


def run(cmd: list[str]) -> tuple[float, int]:
    return common.run(cmd, settle=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=HERE / ".data")
    ap.add_argument("--runs", type=int, default=5, help="runs of the in-place edit")
    ap.add_argument("--copies", type=int, default=5, help="interleaved runs of each whole-file copy")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    # byte-compile ggufx as an installed package would be (PYTHONDONTWRITEBYTECODE may be set here)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "ggufx")], check=True)
    big = args.dir / f"big-{args.size_gib}g.gguf"
    if not big.is_file():
        print(f"building {big} ...", file=sys.stderr)
        build_big(big, args.size_gib)
    a, b = args.dir / "a.jinja", args.dir / "b.jinja"
    a.write_text(TEMPLATE_A)
    b.write_text(TEMPLATE_B)
    size = big.stat().st_size
    gx = tool("ggufx")
    work = args.dir / "work.gguf"
    out = args.dir / "out.gguf"
    rows = []

    def row(label: str, samples: list[tuple[float, int]]) -> float:
        wall = statistics.median(s[0] for s in samples)
        rows.append([label, wall, max(s[1] for s in samples)])
        return wall

    shutil.copy(big, work)
    run([gx, "set", str(work), "general.name", "bench", "--reserve", "1M", "-o", str(out)])  # room for in-place
    out.replace(work)
    t_inplace = row(
        "ggufx set (in place)",
        [
            run([gx, "set", str(work), "tokenizer.chat_template", "--from-file", str((a, b)[i % 2])])
            for i in range(args.runs)
        ],
    )
    t_insert = row(
        "ggufx set (insert-range, grows header)",
        [run([gx, "set", str(work), "tokenizer.chat_template", "--from-file", str(a), "--strategy", "insert-range"])],
    )
    # the copies are interleaved (rewrite, -o, cp, cp+sync, rewrite, ...) so that all see the same
    # state of the page cache and of the filesystem's background work
    samples: dict[str, list[tuple[float, int]]] = {"rewrite": [], "out": [], "cp": [], "cps": []}
    for i in range(args.copies):
        samples["rewrite"].append(
            run(
                [
                    gx,
                    "set",
                    str(work),
                    "tokenizer.chat_template",
                    "--from-file",
                    str((a, b)[i % 2]),
                    "--strategy",
                    "rewrite",
                ]
            )
        )
        samples["out"].append(
            run([gx, "set", str(work), "tokenizer.chat_template", "--from-file", str(b), "-o", str(out)])
        )
        out.unlink()
        samples["cp"].append(run(["cp", str(work), str(out)]))
        out.unlink()
        samples["cps"].append(run(["sh", "-c", f"cp '{work}' '{out}' && sync"]))
        out.unlink()
    t_rewrite = row("ggufx set --strategy rewrite (streamed)", samples["rewrite"])
    t_out = row("ggufx set -o OUT (new file)", samples["out"])
    t_cp = row("cp FILE COPY", samples["cp"])
    t_cps = row("cp FILE COPY && sync (durable, as ggufx)", samples["cps"])
    t_new = row(
        "gguf-new-metadata --chat-template-file",
        [run([tool("gguf-new-metadata"), str(work), str(out), "--chat-template-file", str(a), "--force"])],
    )
    out.unlink()
    work.unlink()
    from tabulate import tabulate

    table = []
    for label, wall, rss in rows:
        table.append(
            [
                label,
                f"{wall:,.3f}",
                f"{size / wall / 2**30:,.2f}" if wall > 0.5 else "-",
                f"{rss / 2**20:,.0f}",
                f"{t_new / wall:,.0f}x",
            ]
        )
    print(
        f"file: {size / 2**30:.2f} GiB ({size:,} bytes), header ~{ggufx.open(big).header.data_offset / 2**20:.1f} MiB; "
        f"medians of {args.runs} in-place runs and {args.copies} interleaved copies; warm page cache\n"
    )
    print(
        tabulate(
            table,
            headers=["command", "wall s", "GiB/s", "peak RSS MiB", "faster than gguf-new-metadata"],
            tablefmt="github",
            colalign=("left", "right", "right", "right", "right"),
        )
    )
    print(
        f"\nin place vs gguf-new-metadata: {t_new / t_inplace:,.0f}x; insert-range {t_insert * 1000:.0f} ms; "
        f"streamed rewrite at {100 * t_cp / t_rewrite:.0f}% of cp and {100 * t_cps / t_rewrite:.0f}% of cp+sync; "
        f"-o at {100 * t_cp / t_out:.0f}% of cp and {100 * t_cps / t_out:.0f}% of cp+sync"
    )


if __name__ == "__main__":
    main()
