"""roles.block_role (what the layer kinds read for every tensor, without parse_name's regular expression)
gives parse_name's layer and role on every name (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ggufx.analysis.roles import block_role, parse_name
from ggufx.errors import GGUFError
from ggufx.model import open_model

FIXTURES = Path(__file__).parent / "fixtures"


def _by_parse_name(name: str) -> tuple[int, str] | None:
    """What layers._layer_kinds read before: parse_name's layer and role of a language-model block tensor."""
    r = parse_name(name)
    return (r.layer, r.role) if r.layer is not None and r.tower is None else None


def _fixture_names() -> set[str]:
    names = {
        t[0] for ts in json.loads((FIXTURES / "llamacpp-logs-cpu" / "tensors.json").read_text()).values() for t in ts
    }
    for path in FIXTURES.glob("*.gguf"):
        try:
            names |= {t.name for t in open_model(path).tensors}
        except GGUFError:  # the malformed and unknown-type fixtures: no names to add
            continue
    return names


def test_every_fixture_tensor_name(real_models: dict[str, Path]) -> None:
    names = _fixture_names()
    for path in real_models.values():
        names |= {t.name for t in open_model(path).tensors}
    assert len(names) > 2000 and any(n.startswith("enc.blk.") for n in names)
    companions = {f"{n}.{s}" for n in list(names)[:200] for s in ("lora_a", "lora_b", "in_sum2", "counts")}
    for name in sorted(names | companions):
        assert block_role(name) == _by_parse_name(name), name
    assert sum(block_role(n) is not None for n in names) > 1500


EDGES = [
    "blk.3.attn_q.weight",
    "blk.03.attn_q.bias",
    "blk.3.attn_q.scales",
    "blk.3.attn_q.scale",
    "blk.3.a.b.weight",
    "blk.3.weight",
    "blk.3..weight",
    "blk.3.",
    "blk.3",
    "blk..attn_q.weight",
    "blk.3a.attn_q.weight",
    "blk.٣.attn_q.weight",  # an Arabic-Indic digit: \d matches it
    "blk.3.attn_q.weight\n",
    "blk.3.attn\nq.weight",
    "blk.3.attn_q.weight.lora_a",
    "blk.3.attn_q.bias.in_sum2",
    "blk.3.attn_q.lora_a.lora_b",
    "direction.7",
    "direction.7\n",
    "direction.x",
    "v.blk.3.attn_q.weight",
    "enc.blk.3.attn_q.weight",
    "dec.blk.3.ffn_up.weight",
    "token_embd.weight",
    "output.weight",
    "xblk.3.attn_q.weight",
    "",
    ".",
    "lora_a",
    ".lora_a",
]


def test_edge_names() -> None:
    for name in EDGES:
        assert block_role(name) == _by_parse_name(name), repr(name)
    assert block_role("blk.12.ffn_up_exps.weight") == (12, "ffn_up_exps")
    assert block_role("v.blk.3.attn_q.weight") is None and block_role("output.weight") is None


PIECES = ["blk", ".", "3", "12", "0", "٣", "attn_q", "weight", "bias", "scale", "scales", "s", "v", "enc", "dec"]
PIECES += ["lora_a", "counts", "direction", "\n", "x", "_exps", ""]


@given(st.lists(st.sampled_from(PIECES), max_size=9).map("".join))
def test_built_names(name: str) -> None:
    assert block_role(name) == _by_parse_name(name), repr(name)


@given(st.text(alphabet=st.sampled_from(list("blk.0123456789_weightbiascalesv\n٣")), max_size=24))
def test_any_text(name: str) -> None:
    assert block_role("blk." + name) == _by_parse_name("blk." + name), repr(name)
    assert block_role(name) == _by_parse_name(name), repr(name)
