"""Facts about ggml tensor types and llama.cpp file types.

The type table (block size in elements, bytes per block) comes from gguf-py's
``gguf.constants`` - llama.cpp's own Python package - so ggufx learns new types by upgrading
``gguf``. ``gguf/__init__`` imports numpy (about 100 ms); ``constants.py`` itself does not, so it
is loaded on its own, which keeps ``ggufx info`` free of numpy.

A type id that the installed ``gguf`` does not know is an :class:`GGMLType` with ``known=False``
and the name ``UNKNOWN(id)``; the reader then derives its size from tensor offsets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

_PRIVATE_NAME = "_ggufx_gguf_constants"


@lru_cache(maxsize=1)
def constants() -> ModuleType:
    """gguf-py's ``gguf.constants`` module, loaded without importing numpy when possible."""
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = f"{loc}/constants.py"
        try:
            cspec = importlib.util.spec_from_file_location(_PRIVATE_NAME, path)
            if cspec is None or cspec.loader is None:
                continue
            mod = importlib.util.module_from_spec(cspec)
            sys.modules[_PRIVATE_NAME] = mod
            cspec.loader.exec_module(mod)
            return mod
        except (OSError, ImportError):
            sys.modules.pop(_PRIVATE_NAME, None)
            continue
    import gguf.constants  # noqa: PLC0415 - fallback, pulls numpy via the package __init__

    return gguf.constants


def _constants_path() -> str | None:
    spec = importlib.util.find_spec("gguf")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(loc, "constants.py")
        if os.path.isfile(path):
            return path
    return None


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ggufx")


@lru_cache(maxsize=1)
def type_table() -> dict:
    """The facts ggufx needs from ``gguf.constants``: ggml types (id -> name, block size, type
    size) and llama file types (id -> name).

    Executing ``constants.py`` (hundreds of enum members) costs ~20 ms per process, a tenth of
    ``ggufx info``; the extracted table is cached as JSON under ``~/.cache/ggufx``, keyed by that
    file's path, size and mtime, so upgrading gguf refreshes it."""
    path = _constants_path()
    cache_file = None
    if path is not None:
        st = os.stat(path)
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        cache_file = os.path.join(_cache_dir(), "ggml-types-%016x.json" % (hash_key(key)))
        try:
            with open(cache_file, encoding="utf-8") as f:
                table = json.load(f)
            if table.get("key") == key:
                return table
        except (OSError, ValueError):
            pass
    c = constants()
    table = {
        "key": key if path is not None else None,
        "types": {str(int(t)): [t.name, *c.GGML_QUANT_SIZES[t]] for t in c.GGMLQuantizationType if t in c.GGML_QUANT_SIZES},
        "file_types": {str(int(t)): t.name for t in c.LlamaFileType},
    }
    if cache_file is not None:
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(table, f)
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home: no cache, same answers
    return table


def hash_key(text: str) -> int:
    """A stable 64-bit FNV-1a hash (``hash()`` is randomised per process)."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True, slots=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int
    known: bool = True

    @property
    def bits_per_weight(self) -> float:
        """Nominal bits per element of this type (0.0 for unknown types)."""
        return 8.0 * self.type_size / self.block_size if self.known else 0.0

    @property
    def is_quantized(self) -> bool:
        """Block-quantized (Q*, IQ*, TQ*, MXFP4...) rather than a plain float or integer type."""
        return self.known and self.name not in _PLAIN_TYPES

    def nbytes(self, n_elements: int) -> int:
        """Bytes of a contiguous tensor of this type, exactly as ``ggml_nbytes`` computes them."""
        if not self.known:
            raise ValueError(f"size of {self.name} is not known")
        return n_elements // self.block_size * self.type_size

    def __str__(self) -> str:
        return self.name


_PLAIN_TYPES = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})


@lru_cache(maxsize=None)
def ggml_type(type_id: int) -> GGMLType:
    """The :class:`GGMLType` for a numeric id; never raises for an unknown id."""
    entry = type_table()["types"].get(str(type_id))
    if entry is None:
        return GGMLType(type_id, f"UNKNOWN({type_id})", 0, 0, known=False)
    name, block_size, type_size = entry
    return GGMLType(type_id, name, block_size, type_size)


@lru_cache(maxsize=None)
def ggml_type_by_name(name: str) -> GGMLType:
    """Look a type up by the name gguf-py spells (``Q4_K``, ``iq4_xs`` is accepted too)."""
    wanted = name.upper()
    for type_id, entry in type_table()["types"].items():
        if entry[0] == wanted:
            return ggml_type(int(type_id))
    raise ValueError(f"unknown ggml type {name!r}")


def all_types() -> list[GGMLType]:
    """Every type the installed gguf-py knows, ordered by nominal bits per weight."""
    types = [ggml_type(int(t)) for t in type_table()["types"]]
    return sorted(types, key=lambda t: (t.bits_per_weight, t.id))


def file_type_label(file_type: int | None) -> str | None:
    """``general.file_type`` as the short label quant names use (``Q4_K_M``, ``F16``...)."""
    if file_type is None:
        return None
    name = type_table()["file_types"].get(str(file_type))
    if name is None:
        return f"UNKNOWN({file_type})"
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def file_type_for_ggml_type(type_name: str) -> int | None:
    """The ``general.file_type`` that llama.cpp guesses from the dominant tensor type."""
    # as llama-model-loader.cpp's switch (type_max): the most common type to the plain ftype
    candidates = {
        "F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q4_0": "MOSTLY_Q4_0",
        "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "Q8_0": "MOSTLY_Q8_0",
        "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
        "Q6_K": "MOSTLY_Q6_K", "TQ1_0": "MOSTLY_TQ1_0", "TQ2_0": "MOSTLY_TQ2_0", "IQ2_XXS": "MOSTLY_IQ2_XXS",
        "IQ2_XS": "MOSTLY_IQ2_XS", "IQ2_S": "MOSTLY_IQ2_S", "IQ3_XXS": "MOSTLY_IQ3_XXS",
        "IQ1_S": "MOSTLY_IQ1_S", "IQ1_M": "MOSTLY_IQ1_M", "IQ4_NL": "MOSTLY_IQ4_NL",
        "IQ4_XS": "MOSTLY_IQ4_XS", "IQ3_S": "MOSTLY_IQ3_S", "NVFP4": "MOSTLY_NVFP4", "Q1_0": "MOSTLY_Q1_0",
        "Q2_0": "MOSTLY_Q2_0",
    }
    name = candidates.get(type_name)
    for ftype_id, ftype_name in type_table()["file_types"].items():
        if ftype_name == name:
            return int(ftype_id)
    return None


def bpw(nbytes: int, n_elements: int) -> float:
    """Bits per weight of a set of tensors, llama.cpp's definition: 8 x bytes / elements."""
    return 8.0 * nbytes / n_elements if n_elements else 0.0


# the KV cache types llama.cpp accepts for -ctk/-ctv (common/arg.cpp kv_cache_types)
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
