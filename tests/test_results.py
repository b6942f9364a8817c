"""The results layer's own pieces: the one size grammar, the memory request, the importance rows
that ``imatrix`` prints and ``recipe --budget`` spends."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx import results
from ggufx.errors import InputError
from tests.companion_files import write_base, write_imatrix
from tests.support import FIXTURES, CliRun


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("25769803777", 25769803777),  # exact, however large (no float on the way)
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("64KiB", 64 << 10),
        ("64KB", 64_000),  # decimal, as a disk maker's GB
        ("2M", 2 << 20),
        ("1MiB", 1 << 20),
        ("24GiB", 24 << 30),
        ("24G", 24 << 30),
        ("24GB", 24 * 10**9),
        ("1.5GiB", 3 << 29),
        ("8e9", 8 * 10**9),
        ("1T", 1 << 40),
        (" 16000MiB ", 16000 << 20),
        ("100B", 100),
    ],
)
def test_one_size_grammar(text: str, size: int) -> None:
    assert results.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-5", "5 XB", "1.2.3G", "GiB"])
def test_a_bad_size_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="is not a size such as 24GiB"):
        results.parse_size(text)


def test_every_option_that_takes_a_size_reads_the_same_grammar(cli: CliRun, tmp_path: Path) -> None:
    """--reserve (edits) took 64KB as 65,536 bytes and --gpus as 64,000: one grammar now."""
    import json

    out = json.loads(
        cli(
            "set", str(FIXTURES / "raw-base.gguf"), "general.name", "x", "--reserve", "64KB", "--dry-run", "--json"
        ).stdout
    )
    assert out["padding_bytes"] >= 64_000 and out["padding_bytes"] < 64 << 10 or out["padding_bytes"] >= 64_000
    code, _, err = cli("set", str(FIXTURES / "raw-base.gguf"), "general.name", "x", "--reserve", "lots", "--dry-run")
    assert code == 2 and "--reserve" in err and "is not a size such as 24GiB" in err


def test_memory_request_reads_llama_args_in_one_place(smollm2_path: Path) -> None:
    """The options and the same options as a llama.cpp command line give the same answer."""
    model = ggufx.open(smollm2_path)
    given = results.memory(
        model,
        results.MemoryRequest(ctx=8192, n_gpu_layers=20, cache_type_k="q8_0", fa="on", parallel=2),
        ggufx.open,
    )
    pasted = results.memory(
        model, results.MemoryRequest(llama_args="-c 8192 -ngl 20 -ctk q8_0 -fa on -np 2"), ggufx.open
    )
    assert given == pasted
    with pytest.raises(InputError) as e:
        results.MemoryRequest(overrides=("no-equals-sign",)).setup(ggufx.open)
    assert e.value.param == "-ot"
    with pytest.raises(InputError) as e:
        results.MemoryRequest(gpus="24GiB,lots").setup(ggufx.open)
    assert e.value.param == "--gpus"


def test_recipe_spends_the_importance_imatrix_prints(tmp_path: Path) -> None:
    """recipe --imatrix reads the statistics from analysis.importance (no JSON round trip): the
    Importance it spends is, tensor for tensor, what `imatrix --json` prints."""
    from ggufx.analysis.importance import importance_map, tensor_importance

    write_base(tmp_path / "base.gguf")
    values = {
        f"blk.{i}.{r}.weight": ([float(i + j + 1)] * (128 if r == "ffn_down" else 64), 4.0 + j)
        for i in range(2)
        for j, r in enumerate(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_gate", "ffn_down"))
    }
    im = ggufx.open(write_imatrix(tmp_path / "imatrix.gguf", values))
    printed = {r["name"]: (r["importance"], r["rank"], r["role_count"]) for r in results.imatrix(im)["tensors"]}
    spent = {n: (i.value, i.rank, i.role_count) for n, i in importance_map(tensor_importance(im)).items()}
    assert spent == printed and len(spent) == 14
    value, rank, role_count = printed["blk.1.ffn_down.weight"]
    assert value == pytest.approx(8.0 / 10.0) and (rank, role_count) == (1, 2)  # (1 + 6 + 1) / count 10
