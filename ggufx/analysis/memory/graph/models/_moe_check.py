"""Why a mixture-of-experts file cannot be built: the checks the MoE builders share (the expert counts and groups,
``token_embd`` and ``output_norm``), and :func:`unbuildable` for the model files whose layers lack one of the
tensors :func:`._moe_dense.unbuildable` asks of every layer (``attn_norm``, ``attn_output``, ``ffn_norm``): the
expert counts, and per layer exactly the weights the caller names."""

from __future__ import annotations

from collections.abc import Callable, Container

from ggufx.model import GGUFModel


def expert_counts(model: GGUFModel) -> str | None:
    """``0 < expert_used_count <= expert_count <= 1024`` (the loaders' checks, ``LLAMA_MAX_EXPERTS``), or why not."""
    md, arch = model.metadata, model.architecture or ""
    n_exp = md.get_int(f"{arch}.expert_count") or 0
    if not 0 < (md.get_int(f"{arch}.expert_used_count") or 0) <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    return None


def expert_groups(model: GGUFModel) -> str | None:
    """Where the experts are in groups (``expert_group_count`` above 1): the count a multiple of the groups, of
    which ``expert_group_used_count`` above 0 and below the groups are used; or why not."""
    md, arch = model.metadata, model.architecture or ""
    n_exp = md.get_int(f"{arch}.expert_count") or 0
    n_groups = md.get_int(f"{arch}.expert_group_count") or 0
    if n_groups > 1 and (n_exp % n_groups or not 0 < (md.get_int(f"{arch}.expert_group_used_count") or 0) < n_groups):
        return "the graph needs expert_count a multiple of expert_group_count > expert_group_used_count > 0"
    return None


def needs_ends(names: Container[str]) -> str | None:
    """``token_embd`` and ``output_norm``, the tensors every decoder's graph reads, among ``names``, or the first
    missing, as ``graphsim.unbuildable`` words it."""
    missing = next((n for n in ("token_embd.weight", "output_norm.weight") if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None


def unbuildable(model: GGUFModel, needed: Callable[[int], tuple[list[str], list[str]]], qkv: bool = True) -> str | None:
    """The expert counts (``0 < expert_used_count <= expert_count <= 1024``), ``token_embd`` and
    ``output_norm``, and per layer ``needed(il)``'s weights (``(weights, three-dimensional experts)`` by
    role, without ``blk.N.`` and ``.weight``; roles ending in ``.bias`` are taken as they are) plus, with
    ``qkv``, the fused ``attn_qkv`` or the three projections; merged gate_up experts are not built."""
    arch = model.architecture or ""
    dims = {t.name: len(t.shape) for t in model.tensors}
    if why := expert_counts(model) or needs_ends(dims):
        return why
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        if p + "ffn_gate_up_exps.weight" in dims:
            return f"{arch} graphs with merged gate_up experts are not simulated"
        flat, three = needed(il)
        if qkv and p + "attn_qkv.weight" not in dims:
            flat = [*flat, "attn_q", "attn_k", "attn_v"]
        for role in flat + three:
            name = p + role + ("" if role.endswith(".bias") else ".weight")
            if name not in dims:
                return f"the graph needs tensor {name}, which the file lacks"
        for role in three:
            if dims[p + role + ".weight"] != 3:
                return f"the graph needs a three-dimensional tensor {p}{role}.weight"
    return None
