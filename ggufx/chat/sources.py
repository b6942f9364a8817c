"""Where chat templates come from: a GGUF's metadata, a .jinja/text file, a Hugging Face
``tokenizer_config.json`` (``chat_template`` as a string or a list of ``{name, template}``) or a
``chat_template.json``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ggufx.errors import FormatError, GGUFError, SourceError
from ggufx.format.spec import GGUF_MAGIC
from ggufx.format.values import GGUFArray
from ggufx.io.sources import is_remote

if TYPE_CHECKING:
    from ggufx.io.remote import RemoteConfig

DEFAULT_KEY = "tokenizer.chat_template"
NAMES_KEY = "tokenizer.chat_templates"


def key_for(name: str | None) -> str:
    """The GGUF key of a named template (llama.cpp's convention; ``default`` is the plain key)."""
    return DEFAULT_KEY if name in (None, "", "default") else f"{DEFAULT_KEY}.{name}"


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """Templates read from one source: ``default`` may be None; ``named`` maps name -> template."""

    origin: str
    kind: str  # "gguf", "tokenizer_config", "text"
    default: str | None
    named: dict[str, str]
    bos_token: str | None = None
    eos_token: str | None = None
    model_path: str | None = None
    model: Any = field(
        default=None, repr=False, compare=False
    )  # the GGUFModel it came from (lint reads its vocabulary)

    def get(self, name: str | None) -> str:
        if name in (None, "", "default"):
            if self.default is None:
                raise GGUFError(
                    self.origin,
                    None,
                    "no chat template" + (f" (named ones: {', '.join(self.named)})" if self.named else ""),
                )
            return self.default
        if name not in self.named:
            raise GGUFError(
                self.origin,
                None,
                f"no chat template named {name!r}" + (f" (there are: {', '.join(self.named)})" if self.named else ""),
            )
        return self.named[name]


def is_gguf(path: str) -> bool:
    """Whether ``path`` is to be read as a GGUF: by its name (``.gguf``, any case: a file so named is
    never taken for a template, however broken it is) or by its first four bytes."""
    if path.lower().endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def load(path: str, remote: RemoteConfig | None = None) -> TemplateSet:
    """Read templates from ``path``: a GGUF (local, https:// or hf://), a JSON tokenizer config, or
    a template text file. ``remote``: the options for a URL (default ``ggufx.io.remote.CONFIG``).
    A path ending in ``.gguf`` is always opened as a GGUF, so that a broken one is the one-line
    GGUFError every other command gives, never a template of its bytes."""
    if is_remote(path):
        return from_gguf(path, remote=remote)
    if not os.path.exists(path):
        raise SourceError(path, None, "no such file")
    if is_gguf(path):
        return from_gguf(path, remote=remote)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SourceError(path, None, e.strerror or str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, e.start, "not UTF-8 text, a tokenizer_config.json or a GGUF file") from None
    if path.endswith(".json") or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if path.endswith(".json"):
                raise FormatError(path, e.pos, f"invalid JSON: {e.msg}") from None
        else:
            if isinstance(doc, dict):
                return _from_config(path, doc)
    return TemplateSet(path, "text", text, {})


def _from_config(path: str, doc: dict) -> TemplateSet:
    tmpl = doc.get("chat_template")
    bos, eos = _token_text(doc.get("bos_token")), _token_text(doc.get("eos_token"))
    if isinstance(tmpl, str):
        return TemplateSet(path, "tokenizer_config", tmpl, {}, bos, eos)
    if isinstance(tmpl, list):
        named: dict[str, str] = {}
        default = None
        for item in tmpl:
            if not (
                isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str)
            ):
                raise FormatError(path, None, 'chat_template list entries must be {"name": ..., "template": ...}')
            if item["name"] == "default":
                default = item["template"]
            else:
                named[item["name"]] = item["template"]
        return TemplateSet(path, "tokenizer_config", default, named, bos, eos)
    raise FormatError(path, None, 'no "chat_template" in this JSON file')


def _token_text(tok: object) -> str | None:
    if isinstance(tok, str):
        return tok
    if isinstance(tok, dict) and isinstance(tok.get("content"), str):
        return tok["content"]
    return None


def from_gguf(path: str, remote: RemoteConfig | None = None) -> TemplateSet:
    from ggufx.model import open_model

    return from_model(open_model(path, remote=remote), path)


def from_model(model: Any, path: str) -> TemplateSet:
    """The templates of an opened :class:`~ggufx.model.model.GGUFModel` (``path`` names it in messages)."""
    md = model.metadata
    prefix = DEFAULT_KEY + "."
    named = {k[len(prefix) :]: md[k] for k in md if k.startswith(prefix) and isinstance(md[k], str)}
    return TemplateSet(
        path, "gguf", md.get_str(DEFAULT_KEY), named, *special_tokens(model), model_path=path, model=model
    )


def special_tokens(model) -> tuple[str | None, str | None]:
    """BOS and EOS token text from the token ids in the metadata."""
    md = model.metadata
    out = []
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, GGUFArray):
        tokens = None
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        tid = md.get_int(key)
        out.append(tokens[tid] if tokens is not None and tid is not None and 0 <= tid < len(tokens) else None)
    return out[0], out[1]
