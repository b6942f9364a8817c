"""The warnings llama.cpp prints about a context size, as it words them, so that ``ggufx mem`` can say
what llama.cpp would say before anything is loaded.

From ``src/llama-context.cpp`` (``llama_context::llama_context``, pinned llama.cpp), after ``n_ctx`` (0:
the training context) is padded to 256 and split into sequences:

* ``n_ctx is not divisible by n_seq_max - rounding down to N`` when a per-sequence split (no unified
  KV cache) does not divide it;
* ``n_ctx_seq (N) > n_ctx_train (M) -- possible training context overflow`` when one sequence's
  context is longer than the context the model was trained for (``{arch}.context_length``).

And from the tools: llama-server caps every slot at the training context
(``tools/server/server-context.cpp`` ``load_model``: ``the slot context (N) exceeds the training context
of the model (M) - capping``); llama-completion compares the whole context with it
(``tools/completion/completion.cpp``: ``model was trained on only M context tokens (N specified)``), as does
llama-embedding (``examples/embedding/embedding.cpp``: ``main: warning: model was trained on only M context tokens
(N specified)``).
"""

from __future__ import annotations

from ggufx.analysis.memory.buffers import ContextParams
from ggufx.analysis.memory.hparams import hparams, pad
from ggufx.model import GGUFModel

__all__ = ["context_warnings", "draft_context_warnings"]


def context_warnings(model: GGUFModel, context: ContextParams, tool: str | None = None) -> list[str]:
    """llama.cpp's warnings for ``context`` on ``model``, each as the line it logs (function prefix
    included: ``llama_context: n_ctx_seq (16384) > n_ctx_train (8192) -- possible training context
    overflow``). ``tool`` ``llama-server``, ``llama-completion`` or ``llama-embedding`` adds the tool's own.
    Empty when llama.cpp says nothing, and when the model states no training context (llama.cpp then needs
    ``-c``)."""
    n_ctx_train = hparams(model).n_ctx_train
    if context.n_ctx == 0 and n_ctx_train == 0:
        return []
    out = []
    n_ctx = pad(context.n_ctx or n_ctx_train)
    if context.kv_unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // max(1, context.n_parallel))
        if n_ctx != n_ctx_seq * context.n_parallel:
            n_ctx = n_ctx_seq * context.n_parallel
            out.append(f"llama_context: n_ctx is not divisible by n_seq_max - rounding down to {n_ctx}")
    if n_ctx_train and n_ctx_seq > n_ctx_train:
        out.append(
            f"llama_context: n_ctx_seq ({n_ctx_seq}) > n_ctx_train ({n_ctx_train}) -- possible training context overflow"
        )
        if tool == "llama-server":
            out.append(
                f"srv    load_model: the slot context ({n_ctx_seq}) exceeds the training context of the model "
                f"({n_ctx_train}) - capping"
            )
    if tool == "llama-completion" and n_ctx_train and n_ctx > n_ctx_train:
        out.append(f"llama_completion: model was trained on only {n_ctx_train} context tokens ({n_ctx} specified)")
    if tool == "llama-embedding" and n_ctx_train and n_ctx > n_ctx_train:  # examples/embedding/embedding.cpp:152-155
        out.append(f"main: warning: model was trained on only {n_ctx_train} context tokens ({n_ctx} specified)")
    return out


def draft_context_warnings(draft: GGUFModel, draft_context: ContextParams, n_ctx: int) -> list[str]:
    """The warnings of a draft model's own ``llama_context``: it takes the target's ``n_ctx`` cells
    (``common_base_params_to_speculative``, common/speculative.cpp), so a draft or EAGLE3 head trained on a short
    context (2048 tokens) warns ``n_ctx_seq (N) > n_ctx_train (2048)`` after the target's lines. The tools' own
    warnings are about the target only."""
    from dataclasses import replace

    lines = context_warnings(draft, replace(draft_context, n_ctx=n_ctx))
    return [w for w in lines if w.startswith("llama_context:")]
