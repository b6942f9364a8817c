"""Files that run beside a model: a multimodal projector (``--mmproj``) and a draft model for
speculative decoding (``-md``). Whether llama.cpp accepts the pair, from headers alone.

* Draft model: ``common_speculative_are_compatible`` (``common/speculative.cpp``): the same vocabulary
  type, the same BOS/EOS use and ids, vocabulary sizes within 128 tokens
  (``SPEC_VOCAB_MAX_SIZE_DIFFERENCE``) and the same text for every token from id 5
  (``SPEC_VOCAB_CHECK_START_TOKEN_ID``) up to the smaller vocabulary.
* Projector: a ``clip`` file whose projection (``clip.vision.projection_dim``, or the last ``mm.*``
  matrix) outputs the language model's embedding size (``n_embd``), which ``mtmd`` feeds it as.
"""

from __future__ import annotations

from ggufx.analysis.hparams import hparams
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5
# llama-vocab.cpp: whether a vocabulary type adds BOS (and EOS) unless the file says otherwise
_ADD_BOS_DEFAULT = {"llama": True, "bert": True, "t5": False, "gpt2": False, "rwkv": False, "plamo2": False}


def _tokens(model: GGUFModel) -> GGUFArray | None:
    v = model.metadata.get("tokenizer.ggml.tokens")
    return v if isinstance(v, GGUFArray) else None


def _flag(model: GGUFModel, key: str, default: bool) -> bool:
    v = model.metadata.get(key)
    return v if isinstance(v, bool) else default


def draft_incompatibility(target: GGUFModel, draft: GGUFModel) -> str | None:
    """Why llama.cpp would refuse ``draft`` as the draft model of ``target`` (None: it accepts it)."""
    md_t, md_d = target.metadata, draft.metadata
    vt, vd = md_t.get_str("tokenizer.ggml.model"), md_d.get_str("tokenizer.ggml.model")
    if vt != vd:
        return f"the draft model's vocabulary type is {vd!r}, the model's {vt!r}"
    for what, default in (("bos", _ADD_BOS_DEFAULT.get(vt or "", False)), ("eos", False)):
        add_t = _flag(target, f"tokenizer.ggml.add_{what}_token", default)
        add_d = _flag(draft, f"tokenizer.ggml.add_{what}_token", default)
        id_t, id_d = md_t.get_int(f"tokenizer.ggml.{what}_token_id"), md_d.get_int(f"tokenizer.ggml.{what}_token_id")
        if add_t != add_d or (add_t and id_t != id_d):
            return (
                f"{what.upper()} differs: the model {'adds' if add_t else 'does not add'} token {id_t}, the draft model "
                f"{'adds' if add_d else 'does not add'} token {id_d}"
            )
    tt, td = _tokens(target), _tokens(draft)
    if tt is None or td is None:
        return "a vocabulary (tokenizer.ggml.tokens) is missing"
    if abs(len(tt) - len(td)) > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
        return (
            f"the vocabularies differ by {abs(len(tt) - len(td))} tokens ({len(tt)} and {len(td)}; llama.cpp allows "
            f"{SPEC_VOCAB_MAX_SIZE_DIFFERENCE})"
        )
    for i in range(SPEC_VOCAB_CHECK_START_TOKEN_ID, min(len(tt), len(td))):
        if tt[i] != td[i]:
            return f"token {i} differs: {tt[i]!r} in the model, {td[i]!r} in the draft model"
    return None


def projector_incompatibility(model: GGUFModel, mmproj: GGUFModel) -> str | None:
    """Why ``mmproj`` cannot feed ``model`` (None: the sizes agree)."""
    if mmproj.architecture != "clip":
        return f"{mmproj.path} is not a projector (general.architecture is {mmproj.architecture!r}, not 'clip')"
    md = mmproj.metadata
    dim = md.get_int("clip.vision.projection_dim") or md.get_int("clip.audio.projection_dim")
    if dim is None:
        mats = [
            t for t in mmproj.tensors if t.name.startswith("mm.") and t.name.endswith(".weight") and len(t.shape) == 2
        ]
        dim = mats[-1].shape[1] if mats else None
    n_embd = hparams(model).n_embd
    if dim is not None and dim != n_embd:
        return f"the projector projects to {dim} but the model's embedding is {n_embd}"
    return None
