"""Find GGUF models in folders, a Hugging Face cache and an Ollama store, and audit each header.

* plain folders: every ``*.gguf``; split shards (``NAME-00001-of-00003.gguf``) become one model;
* a Hugging Face cache (``models--ORG--NAME/snapshots/REV/...``): named ``ORG/NAME@REV/PATH``;
* an Ollama store (``manifests/`` + ``blobs/sha256-*``): named as ``ollama run`` knows it
  (``NAME:TAG``, ``NAMESPACE/NAME:TAG``) from the manifests' model layers;
* a Hub repository ``hf://ORG/REPO[@REV]``: its GGUF files listed by the Hub's API, their headers
  read with range requests (:mod:`ggufx.io.remote`), several at once: ``ORG/REPO@REV/PATH``.

Header-only and fault-tolerant: a corrupt file or a missing shard is a row with a problem, never
the end of the scan. Chat template facts are computed once per distinct template.

Companion files (a projector, LoRA adapter, importance matrix or control vector: the header says
which, :mod:`ggufx.analysis.filekind`) are grouped with the models they sit beside: the same
folder (a Hugging Face repository keeps a model's quants and its ``mmproj-*.gguf`` in one folder),
or the same Ollama manifest (its projector and adapter layers). Each companion is checked against
each model of its group with llama.cpp's loading rules (:mod:`ggufx.analysis.companions`); a pair
that does not fit is listed, and a companion that fits none of its models is a problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ggufx.analysis.filekind import file_kind
from ggufx.analysis.summary import summarize
from ggufx.errors import GGUFError
from ggufx.model.shards import SHARD_RE

if TYPE_CHECKING:
    from ggufx.io.remote import RemoteConfig
    from ggufx.model import GGUFModel

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
# the other GGUF layers of an Ollama manifest, named after the model as "NAME:TAG (projector)"
OLLAMA_COMPANION_LAYERS = {
    "application/vnd.ollama.image.projector": "projector",
    "application/vnd.ollama.image.adapter": "adapter",
}


@dataclass(slots=True)
class ScanRow:
    name: str
    path: str
    source: str  # "file", "hf-cache", "ollama"
    shards: int = 1
    architecture: str | None = None
    parameters: int | None = None
    file_type: str | None = None
    bpw: float | None = None
    file_bytes: int | None = None
    dialect: str | None = None
    problems: list[str] = field(default_factory=list)
    group: str = ""  # the folder, repository folder or Ollama manifest the file belongs to
    kind: str | None = None  # filekind.KINDS; None when the header could not be read
    companions: list[str] = field(default_factory=list)  # a model's: the companions that fit it
    companion_of: list[str] = field(default_factory=list)  # a companion's: the models it fits
    mismatches: list[dict[str, str]] = field(default_factory=list)  # a companion's: {model, reason}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "group": self.group,
            "companions": self.companions,
            "companion_of": self.companion_of,
            "mismatches": self.mismatches,
            "name": self.name,
            "path": self.path,
            "source": self.source,
            "shards": self.shards,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "file_type": self.file_type,
            "bpw": None if self.bpw is None else round(self.bpw, 4),
            "file_bytes": self.file_bytes,
            "dialect": self.dialect,
            "problems": self.problems,
        }


def default_ollama() -> str:
    return os.environ.get("OLLAMA_MODELS") or os.path.expanduser("~/.ollama/models")


def _ollama_models(root: str) -> Iterator[tuple[str, str]]:
    """(name, blob path) for every GGUF layer named by a manifest: the model as ``NAME:TAG``, its
    projector and adapters as ``NAME:TAG (projector)``, ``NAME:TAG (adapter)``."""
    mdir = os.path.join(root, "manifests")
    for dirpath, _, files in os.walk(mdir):
        for tag in files:
            mpath = os.path.join(dirpath, tag)
            rel = os.path.relpath(mpath, mdir).split(os.sep)  # host/namespace/name/tag
            try:
                with open(mpath, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue
            host, ns, name = (rel + ["", "", ""])[:3] if len(rel) >= 4 else ("", "", rel[-2] if len(rel) > 1 else tag)
            label = (
                f"{name}:{tag}"
                if ns == "library" and host == "registry.ollama.ai"
                else f"{ns}/{name}:{tag}"
                if host == "registry.ollama.ai"
                else f"{host}/{ns}/{name}:{tag}"
            )
            for layer in doc.get("layers", []) if isinstance(doc, dict) else []:
                if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str):
                    continue
                media = layer.get("mediaType")
                part = "" if media == OLLAMA_MODEL_LAYER else OLLAMA_COMPANION_LAYERS.get(str(media))
                if part is not None:
                    name = f"{label} ({part})" if part else label
                    yield name, os.path.join(root, "blobs", layer["digest"].replace(":", "-"))


def _hf_name(path: str) -> str | None:
    parts = os.path.abspath(path).split(os.sep)
    for i, p in enumerate(parts):
        if p.startswith("models--") and i + 3 < len(parts) and parts[i + 1] == "snapshots":
            repo = p[len("models--") :].replace("--", "/")
            return f"{repo}@{parts[i + 2][:12]}/{'/'.join(parts[i + 3 :])}"
    return None


def discover(roots: list[str], remote: RemoteConfig | None = None) -> list[tuple[str, str, str, str]]:
    """(name, path, source, group) for each GGUF file: one entry per unsplit file or per split set;
    ``group`` is its folder (or Ollama manifest). ``remote``: the options for listing ``hf://``
    repositories (default ``ggufx.io.remote.CONFIG``)."""
    found: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for root in roots:
        if root.startswith("hf://"):
            found.extend(_hf_repo_models(root, remote))
            continue
        if os.path.isdir(os.path.join(root, "manifests")) and os.path.isdir(os.path.join(root, "blobs")):
            for name, blob in _ollama_models(root):
                found.append((name, blob, "ollama", name.partition(" (")[0]))
                seen.add(os.path.realpath(blob))
            continue
        for dirpath, dirnames, files in os.walk(root, followlinks=False):
            dirnames[:] = sorted(
                d for d in dirnames if d != "blobs" or not os.path.isdir(os.path.join(dirpath, "snapshots"))
            )
            groups: dict[str, list[str]] = {}
            for f in sorted(files):
                if not f.endswith(".gguf"):
                    continue
                path = os.path.join(dirpath, f)
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                m = SHARD_RE.match(f)
                if m:
                    groups.setdefault(os.path.join(dirpath, m["prefix"]), []).append(path)
                    continue
                hf = _hf_name(path)
                found.append((hf or path, path, "hf-cache" if hf else "file", dirpath))
            for prefix, paths in groups.items():
                first = sorted(paths)[0]
                hf = _hf_name(first)
                name = (hf or prefix) + f" ({_shards_found(len(paths))})"
                found.append((name, first, "hf-cache" if hf else "file", dirpath))
    return found


def _shards_found(n: int) -> str:
    return f"{n} shard{'' if n == 1 else 's'} found"


def _hf_repo_models(root: str, remote: RemoteConfig | None) -> list[tuple[str, str, str, str]]:
    """(name, hf:// reference, "hf", folder) for each GGUF file of a Hub repository (first shard of
    a set)."""
    from ggufx.io.remote import list_hf_repo

    base = root.rstrip("/")
    repo_rev = base[len("hf://") :]
    out: list[tuple[str, str, str, str]] = []
    groups: dict[str, list[str]] = {}
    for path, _size in sorted(list_hf_repo(root, remote)):
        if not path.endswith(".gguf"):
            continue
        m = SHARD_RE.match(path.rpartition("/")[2])
        if m:
            groups.setdefault(path.rpartition("/")[0] + "/" + m["prefix"], []).append(path)
            continue
        out.append((f"{repo_rev}/{path}", f"{base}/{path}", "hf", f"{base}/{path.rpartition('/')[0]}"))
    for prefix, paths in groups.items():
        first = sorted(paths)[0]
        name = f"{repo_rev}/{prefix.lstrip('/')} ({_shards_found(len(paths))})"
        out.append((name, f"{base}/{first}", "hf", f"{base}/{first.rpartition('/')[0]}"))
    return sorted(out)


def scan(roots: list[str], lint_templates: bool = True, remote: RemoteConfig | None = None) -> list[ScanRow]:
    """One row per model under ``roots`` (folders, a Hugging Face cache, an Ollama store, or
    ``hf://ORG/REPO[@REV]`` repositories, whose headers are read remotely and in parallel, with the
    options ``remote``: default ``ggufx.io.remote.CONFIG``)."""
    found = discover(roots, remote)
    rows = [ScanRow(name, path, source, group=group) for name, path, source, group in found]
    template_cache: dict[str, tuple[str, list[str]]] = {}
    if any(r.source == "hf" for r in rows):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: _audit(r, template_cache, lint_templates, remote), rows))
    else:
        for row in rows:
            _audit(row, template_cache, lint_templates, remote)
    pair_companions(rows, remote)
    return rows


def _pair_rule(kind: str) -> Callable[[GGUFModel, GGUFModel], str | None] | None:
    from ggufx.analysis import companions

    return {
        "projector": companions.projector_incompatibility,
        "adapter": companions.lora_incompatibility,
        "imatrix": companions.imatrix_coverage,
        "control-vector": companions.control_vector_incompatibility,
    }.get(kind)


_QUANT_TOKEN = re.compile(
    r"(?:^|[-_.])(?:ud-)?(?:i?q\d(?:_[a-z0-9]+)*|f16|bf16|f32|fp16|fp32|mxfp4(?:_moe)?)(?=$|[-_.])", re.IGNORECASE
)
_COMPANION_TOKEN = re.compile(r"(?:^|[-_.])(?:mmproj|imatrix|lora|adapter|cvec|control[-_]?vector)(?=$|[-_.])", re.I)


def name_stem(name: str) -> str:
    """A file's model name as Hugging Face repositories spell it, without the companion marker, the
    quantization and the shard number: ``mmproj-Qwen3-VL-8B-Instruct-F16.gguf`` and
    ``Qwen3-VL-8B-Instruct-UD-Q4_K_XL.gguf`` both give ``qwen3vl8binstruct``; ``mmproj-F16.gguf`` gives
    ``""`` (no name: it goes with every model of its folder)."""
    base = os.path.basename(name.split(" (")[0])
    shard = SHARD_RE.match(base if base.endswith(".gguf") else base + ".gguf")
    base = (shard["prefix"] if shard else base).lower().removesuffix(".gguf")
    base = _COMPANION_TOKEN.sub("-", base)
    base = _QUANT_TOKEN.sub("-", base)
    return re.sub(r"[-_. ]+", "", base)


def _candidates(companion: ScanRow, models: list[ScanRow]) -> list[ScanRow]:
    """The models a companion is meant for: those whose name it shares, else all of its group."""
    stem = name_stem(companion.path)
    if not stem:
        return models
    named = [m for m in models if _same_name(stem, name_stem(m.path))]
    return named or models


def _same_name(a: str, b: str) -> bool:
    """One stem is the other, or starts it (``qwen3vl8b`` and ``qwen3vl8binstruct``), the shorter
    long enough to say something (4 characters)."""
    short, long = sorted((a, b), key=len)
    return len(short) >= 4 and long.startswith(short)


def pair_companions(rows: list[ScanRow], remote: RemoteConfig | None = None) -> None:
    """Check every companion against the models of its group that its name points at (all of them
    when it names none): fill ``companions``, ``companion_of`` and ``mismatches``; a companion that
    fits none of them gets a problem. Headers only; one model header is held at a time."""
    from ggufx.model import open_model

    groups: dict[str, list[ScanRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    for members in groups.values():
        models = [r for r in members if r.kind == "model"]
        extras = [r for r in members if r.kind and _pair_rule(r.kind)]
        if not models or not extras:
            continue
        try:
            opened = {c.name: open_model(c.path, remote=remote) for c in extras}
        except (GGUFError, OSError):  # changed since it was read: the rows already say what was found
            continue
        wanted = {c.name: _candidates(c, models) for c in extras}
        for m in models:
            if not any(m in ms for ms in wanted.values()):
                continue
            try:
                model = open_model(m.path, remote=remote)
            except (GGUFError, OSError):
                continue
            for c in extras:
                if m not in wanted[c.name]:
                    continue
                _check_pair(m, c, model, opened[c.name])
        for c in extras:
            if c.mismatches and not c.companion_of:
                first = c.mismatches[0]
                c.problems.append(
                    f"fits none of the {len(wanted[c.name])} model(s) beside it; {first['model']}: {first['reason']}"
                )


def _check_pair(m: ScanRow, c: ScanRow, model: GGUFModel, companion: GGUFModel) -> None:
    rule = _pair_rule(c.kind or "")
    if rule is None:
        return
    try:
        reason = rule(model, companion)
    except GGUFError as e:
        reason = e.one_line()
    if reason is None:
        c.companion_of.append(m.name)
        m.companions.append(c.name)
    else:
        c.mismatches.append({"model": m.name, "reason": reason})


def _audit(
    row: ScanRow, template_cache: dict[str, tuple[str, list[str]]], lint_templates: bool, remote: RemoteConfig | None
) -> None:
    from ggufx.model import open_model

    try:
        model = open_model(row.path, remote=remote)
    except GGUFError as e:
        row.problems.append(e.one_line())
        return
    except OSError as e:
        row.problems.append(f"{row.path}: {e.strerror or e}")
        return
    s = summarize(model)
    row.kind = file_kind(model)
    row.shards, row.architecture, row.parameters = len(model.shards), s.architecture, s.parameters
    row.file_type, row.bpw, row.file_bytes = s.file_type_label, s.bpw, s.file_bytes
    tmpl = model.metadata.get_str("tokenizer.chat_template")
    if tmpl is None:
        row.dialect = "-"
        return
    key = hashlib.sha256(tmpl.encode("utf-8", "surrogateescape")).hexdigest()
    if key not in template_cache:
        template_cache[key] = _template_facts(model, tmpl, lint_templates)
    row.dialect, probs = template_cache[key]
    row.problems.extend(probs)


def _template_facts(model: GGUFModel, tmpl: str, lint_templates: bool) -> tuple[str, list[str]]:
    from ggufx.chat.lint import lint
    from ggufx.chat.sources import special_tokens

    bos, eos = special_tokens(model)
    md = model.metadata
    res = lint(
        tmpl,
        variables={"bos_token": bos or "", "eos_token": eos or ""},
        tokens=md["tokenizer.ggml.tokens"] if "tokenizer.ggml.tokens" in md and lint_templates else None,
        add_bos_token=md.get("tokenizer.ggml.add_bos_token"),
    )
    problems = (
        [f"template {p.code}: {p.message}" for p in res.problems if p.severity == "error"] if lint_templates else []
    )
    return (res.info.dialect if res.info else "unknown"), problems
