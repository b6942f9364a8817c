"""Files that run beside a model: a multimodal projector (``--mmproj``) and a draft model for
speculative decoding (``-md``). Whether llama.cpp accepts the pair, from headers alone.

* Draft model: ``common_speculative_are_compatible`` (``common/speculative.cpp``): the same vocabulary
  type, the same BOS/EOS use and ids, vocabulary sizes within 128 tokens
  (``SPEC_VOCAB_MAX_SIZE_DIFFERENCE``) and the same text for every token from id 5
  (``SPEC_VOCAB_CHECK_START_TOKEN_ID``) up to the smaller vocabulary.
* Projector: a ``clip`` file whose projection (``clip.vision.projection_dim``, or the last ``mm.*``
  matrix) outputs the language model's embedding size (``n_embd``), which ``mtmd`` feeds it as.
* LoRA adapter: ``llama_adapter_lora_init_impl`` (``src/llama-adapter.cpp``): ``general.type`` adapter,
  the model's ``general.architecture``, ``adapter.type`` lora, tensors ``X.lora_a``/``X.lora_b`` (or
  ``*_norm.weight``, ignored) in pairs naming a base tensor X with ne [n_in, n_out], lora_a
  [n_in, r] and lora_b [r, n_out] (``token_embd.weight``: lora_b [n_in, r], lora_a [r, n_out]).
* Importance matrix: every weight ``llama-quantize`` quantizes (``tensor_allows_quantization``) has
  importance data of ``ne[0] x ne[2]`` values (``llama_model_quantize_impl``), except
  ``token_embd``/``output`` which never require one (``tensor_requires_imatrix``) and which
  llama-imatrix does not collect by default.
* Control vector: ``common_control_vector_load_one`` (``common/common.cpp``): tensors ``direction.N``
  with N >= 1, F32, one dimension, all of one length, which ``llama_adapter_cvec::apply``
  (``src/llama-adapter.cpp``) requires to equal the model's ``n_embd``.
"""

from __future__ import annotations

from ggufx.analysis.filekind import file_kind, imatrix_pairs, lora_pairs
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.roles import is_quantizable_weight
from ggufx.analysis.summary import ggml_n_dims
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


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def lora_incompatibility(model: GGUFModel, lora: GGUFModel) -> str | None:
    """Why llama.cpp would refuse ``lora`` as an adapter of ``model`` (None: it loads it), in the
    order ``llama_adapter_lora_init_impl`` checks."""
    gtype = lora.metadata.get_str("general.type")
    if gtype != "adapter":
        return (
            f"{lora.path} is not an adapter (general.type is {gtype!r}, not 'adapter'; its kind is {file_kind(lora)})"
        )
    if lora.architecture != model.architecture:
        return f"the adapter is for architecture {lora.architecture!r}, the model is {model.architecture!r}"
    atype = lora.metadata.get_str("adapter.type")
    if atype != "lora":
        return f"adapter.type is {atype!r}, llama.cpp loads only 'lora'"
    for t in lora.tensors:
        if not t.name.endswith((".lora_a", ".lora_b", "_norm.weight")):
            return f"adapter tensor '{t.name}' has an unexpected suffix (not .lora_a, .lora_b or _norm.weight)"
    base = {t.name: tuple(t.shape) + (1,) * (2 - len(t.shape)) for t in model.tensors}
    for name, pair in sorted(lora_pairs(lora).items()):
        if "a" not in pair or "b" not in pair:
            return f"'{name}' has a lora_{'b' if 'b' in pair else 'a'} but no lora_{'a' if 'b' in pair else 'b'}"
        if name not in base:
            return f"'{name}' is adapted but the model has no tensor of that name"
        a, b = pair["a"] + (1,) * (2 - len(pair["a"])), pair["b"] + (1,) * (2 - len(pair["b"]))
        n_in, n_out = base[name][0], base[name][1]
        if name.endswith("token_embd.weight"):
            if n_in != b[1] or n_out != a[1]:
                return (
                    f"'{name}' is {_dims(base[name][:2])} but its lora_b is {_dims(b)} and lora_a {_dims(a)} "
                    f"(expected lora_b [r, {n_in}], lora_a [r, {n_out}])"
                )
            continue
        if n_in != a[0] or n_out != b[1]:
            return (
                f"'{name}' is {_dims(base[name][:2])} but its lora_a is {_dims(a)} and lora_b {_dims(b)} "
                f"(expected lora_a [{n_in}, r], lora_b [r, {n_out}])"
            )
        if a[1] != b[0]:
            return f"'{name}': lora_a is {_dims(a)} but lora_b is {_dims(b)} (rank {a[1]} against {b[0]}; lora_a not transposed)"
    return None


def imatrix_coverage(model: GGUFModel, imatrix: GGUFModel) -> str | None:
    """Which weights ``llama-quantize`` would quantize from ``model`` without importance data of
    the right size from ``imatrix`` (None: all are covered)."""
    if file_kind(imatrix) != "imatrix":
        return f"{imatrix.path} is not an imatrix (its kind is {file_kind(imatrix)})"
    sizes: dict[str, int] = {}
    by_name = {t.name: t for t in imatrix.tensors}
    for name in imatrix_pairs(imatrix):
        sizes[name] = by_name[name + ".in_sum2"].n_elements
    missing: list[str] = []
    wrong: list[str] = []
    for t in model.tensors:
        if t.name in ("token_embd.weight", "output.weight"):
            continue
        if not is_quantizable_weight(t.name, ggml_n_dims(t.shape)):
            continue
        want = t.shape[0] * (t.shape[2] if len(t.shape) > 2 else 1)
        have = sizes.get(t.name)
        if have is None:
            missing.append(t.name)
        elif have != want:
            wrong.append(f"{t.name} (imatrix size {have}, tensor size {want})")
    if wrong:
        return f"{len(wrong)} tensor(s) have importance data of the wrong size: {', '.join(wrong[:5])}" + (
            " ..." if len(wrong) > 5 else ""
        )
    if missing:
        return f"{len(missing)} quantizable tensor(s) have no importance data: {', '.join(missing[:5])}" + (
            " ..." if len(missing) > 5 else ""
        )
    return None


def control_vector_incompatibility(model: GGUFModel, cvec: GGUFModel) -> str | None:
    """Why llama.cpp would skip or refuse ``cvec`` for ``model`` (None: it applies)."""
    if file_kind(cvec) != "control-vector":
        return f"{cvec.path} is not a control vector (its kind is {file_kind(cvec)})"
    lengths: set[int] = set()
    for t in cvec.tensors:
        layer = t.name.partition(".")[2]
        if not t.name.startswith("direction.") or not layer.isdigit() or int(layer) == 0:
            return f"'{t.name}' is not a direction tensor of a layer from 1 up (llama.cpp skips the file)"
        if t.type.name != "F32" or ggml_n_dims(t.shape) != 1:
            return f"'{t.name}' must be a one-dimensional F32 tensor (llama.cpp skips the file)"
        lengths.add(t.n_elements)
    if len(lengths) > 1:
        return f"its directions have different lengths ({', '.join(map(str, sorted(lengths)))})"
    n_embd = hparams(model).n_embd
    if lengths and (length := lengths.pop()) != n_embd:
        return f"its directions have {length} values but the model's embedding is {n_embd}"
    return None
