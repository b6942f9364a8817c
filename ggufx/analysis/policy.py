"""Policy checks for CI: a TOML policy of rules, each a PASS or FAIL with a reason.

Schema (every section optional). Every key and value is checked before any rule runs: an unknown
section or key, a value of the wrong kind (a number where a table is wanted...), a bound that is
not a number, a min above its max or a rule that checks nothing is a PolicyError naming the key and
its line, never a rule that passes (:func:`validate_policy`):

    [model]
    architecture = "llama"                 # or a list of allowed architectures
    file_type = "Q4_K_M"
    bpw = { min = 4.8, max = 5.6 }         # llama.cpp's BPW (all tensors)
    bpw_weights = { min = 4.5 }            # over quantizable weights only
    parameters = { min = 1e9, max = 2e9 }

    [tensors]                              # regex (searched in tensor names) -> rule
    "blk\\.\\d+\\.ffn_down" = { min = "Q5_K" }      # ordered by bits per weight
    "token_embd" = { allowed = ["Q8_0", "Q6_K"] }
    "output\\.weight" = { type = "Q6_K" }
    "ssm_out" = { min = "Q8_0", max = "F16" }

    [metadata]
    required = ["tokenizer.chat_template"]
    forbidden = ["general.url"]
    equals = { "general.architecture" = "llama", "tokenizer.ggml.add_bos_token" = false }

    [chat_template]
    sha256 = "…"                          # the template you reviewed
    dialect = "qwen3-coder-xml"            # or a list
    lint_clean = true

    [memory]
    ctx = 32768
    cache_type = "q8_0"
    budget = "24GiB"                       # GPU total (weights + KV + state + compute estimate)

    [fingerprint]
    equals = "…"                           # ggufx hash; reads all tensor data

    [companions]                           # files that run beside the model (relative to this file)
    mmproj = "mmproj.gguf"                 # a projector whose output width is the model's embedding
    draft = "draft.gguf"                   # a draft model llama.cpp accepts for speculative decoding
    lora = "adapter.gguf"                  # a LoRA adapter llama.cpp loads onto the model
    imatrix = "imatrix.gguf"               # importance data for every weight llama-quantize quantizes
    control_vector = "cvec.gguf"           # a control vector whose directions are the model's width
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ggufx.analysis.roles import parse_name
from ggufx.analysis.summary import summarize
from ggufx.errors import PolicyError
from ggufx.format.ggmltypes import GGMLType, ggml_type_by_name
from ggufx.format.reader import TensorInfo
from ggufx.format.values import GGUFArray
from ggufx.io.sources import is_remote
from ggufx.model import GGUFModel

SCHEMA: dict[str, set[str]] = {
    "model": {"architecture", "file_type", "bpw", "bpw_weights", "parameters"},
    "tensors": set(),  # any regex
    "metadata": {"required", "forbidden", "equals"},
    "chat_template": {"sha256", "dialect", "lint_clean"},
    "memory": {"ctx", "cache_type", "budget", "parallel"},
    "fingerprint": {"equals"},
    "companions": {"mmproj", "draft", "lora", "imatrix", "control_vector"},
}
TENSOR_RULE_KEYS = {"min", "max", "allowed", "type"}

Section = dict[str, Any]  # one [section] of a policy as TOML parsed it (values of any TOML type)


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "reason": self.reason}


@dataclass(slots=True)
class CheckReport:
    path: str
    results: list[RuleResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "passed": self.passed, "results": [r.to_dict() for r in self.results]}


def load_policy(path: str) -> dict[str, Any]:
    """Parse and validate a policy file; a typo or a value of the wrong kind is a PolicyError naming
    the key and its line (:func:`validate_policy`)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PolicyError(path, None, e.strerror or str(e)) from None
    text = raw.decode("utf-8", "replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(path, None, f"invalid TOML: {e}") from None
    validate_policy(doc, path, text)
    if not any(doc.values()):  # an empty file (or the wrong one) would pass every model it checks
        raise PolicyError(path, None, f"no rules: a policy that checks nothing (sections: {', '.join(sorted(SCHEMA))})")
    companions = doc.get("companions", {})
    for key, value in companions.items():
        companions[key] = companion_path(path, value)
    return doc


def companion_path(policy_path: str, value: str) -> str:
    """A ``[companions]`` path: relative to the policy file's folder (URLs and absolute paths kept)."""
    import os

    if is_remote(value) or os.path.isabs(value):
        return value
    return os.path.join(os.path.dirname(policy_path), value)


# --- validation --------------------------------------------------------------------------------
# Every value of a policy is checked against what its rule reads before any rule runs: a key the
# rule does not know, a table where a number is wanted (or the reverse), a bound that is not a
# number, a range whose min is above its max, a rule that names nothing to check. Each is a
# PolicyError naming the key (``[model] bpw.mn``) and the line of the policy it is on, so that a
# typo can never become a check that passes.

Key = tuple[str | int, ...]  # a key path in the parsed document: ("model", "bpw", "mn"); ints index arrays
Fail = Callable[[Key, str], NoReturn]
ValueCheck = Callable[[Key, Any, Fail], None]

RANGE_KEYS = ("min", "max")  # [model] bpw, bpw_weights, parameters: numbers, both inclusive


def validate_policy(doc: dict[str, Any], path: str = "(policy)", text: str = "") -> None:
    """Check every section, key and value of a parsed policy; the first problem is a PolicyError
    naming the key and, when ``text`` (the TOML source) is given, its line."""

    def fail(key: Key, msg: str) -> NoReturn:
        line = _line_of_key(text, key) if text else None
        raise PolicyError(path, None, (f"line {line}: " if line else "") + msg)

    for section, body in doc.items():
        if section not in SCHEMA:
            fail((section,), f"unknown section [{section}] (known: {', '.join(sorted(SCHEMA))})")
        if not isinstance(body, dict):
            fail((section,), f"[{section}] must be a table, not {_kind(body)}")
        if section == "tensors":
            for pattern, rule in body.items():
                _validate_tensor_rule(pattern, rule, fail)
            continue
        for key, value in body.items():
            if key not in SCHEMA[section]:
                known = ", ".join(sorted(SCHEMA[section]))
                fail((section, key), f"unknown key {key!r} in [{section}] (known: {known})")
            _VALUE_CHECKS[section, key]((section, key), value, fail)
    memory = doc.get("memory")
    if memory and "budget" not in memory:
        fail(("memory",), "[memory] has no budget: without one its rule cannot fail")


def _kind(value: object) -> str:
    """What TOML calls the kind of ``value``, with the value: ``a float (5.0)``, ``a table``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"  # the only other kind TOML has


def _name(key: Key) -> str:
    """``[model] bpw.min`` for ("model", "bpw", "min"); an array item as ``required[2]``."""
    out = ""
    for k in key[1:]:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return f"[{key[0]}]" + (f" {out}" if out else "")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_rule(key: Key, value: Any, fail: Fail) -> None:
    """``{ min = N, max = N }``: a table of the known keys, at least one, numbers, min <= max."""
    import math

    if not isinstance(value, dict):
        fail(key, f"{_name(key)} must be a table such as {{ min = 4.5, max = 5.6 }}, not {_kind(value)}")
    for k, bound in value.items():
        if k not in RANGE_KEYS:
            fail((*key, k), f"unknown key {k!r} in {_name(key)} (known: {', '.join(RANGE_KEYS)})")
        if not _is_number(bound) or math.isnan(bound):
            fail((*key, k), f"{_name((*key, k))} must be a number, not {_kind(bound)}")
    if not value:
        fail(key, f"{_name(key)} is empty: give min, max or both")
    if "min" in value and "max" in value and value["min"] > value["max"]:
        fail(key, f"{_name(key)}: min {value['min']} is greater than max {value['max']}")


def _string(key: Key, value: Any, fail: Fail, known: Collection[str] | None = None, what: str = "") -> None:
    """A non-empty string; one of ``known`` when given."""
    if not isinstance(value, str):
        fail(key, f"{_name(key)} must be a string, not {_kind(value)}")
    if not value:
        fail(key, f"{_name(key)} is an empty string")
    if known is not None and value not in known:
        fail(key, f"{_name(key)}: unknown {what} {value!r} (known: {', '.join(sorted(known))})")


def _strings(key: Key, value: Any, fail: Fail, known: Collection[str] | None = None, what: str = "") -> None:
    """A non-empty array of non-empty strings (each one of ``known`` when given)."""
    if not isinstance(value, list):
        fail(key, f"{_name(key)} must be an array of strings, not {_kind(value)}")
    if not value:
        fail(key, f"{_name(key)} is an empty array: a rule that checks nothing")
    for i, item in enumerate(value):
        _string((*key, i), item, fail, known, what)


def _string_or_strings(known: Callable[[], Collection[str]] | None = None, what: str = "") -> ValueCheck:
    """A string, or a non-empty array of them (``architecture``, ``dialect``); ``known()`` is asked
    only when a value is checked (its names come from modules a policy may not otherwise need)."""

    def check(key: Key, value: Any, fail: Fail) -> None:
        names = known() if known is not None else None
        if isinstance(value, list):
            _strings(key, value, fail, names, what)
        elif isinstance(value, str):
            _string(key, value, fail, names, what)
        else:
            fail(key, f"{_name(key)} must be a string or an array of strings, not {_kind(value)}")

    return check


def _one_of(known: Callable[[], Collection[str]], what: str) -> ValueCheck:
    """A string naming one of ``known()``."""
    return lambda key, value, fail: _string(key, value, fail, known(), what)


def _hex_digest(digits: int, what: str) -> ValueCheck:
    """A digest as ggufx prints it: ``digits`` hexadecimal digits (either case)."""

    def check(key: Key, value: Any, fail: Fail) -> None:
        _string(key, value, fail)
        if not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value):
            fail(key, f"{_name(key)} must be {what} ({digits} hexadecimal digits), not {value!r}")

    return check


def _integer(minimum: int, meaning: str) -> ValueCheck:
    def check(key: Key, value: Any, fail: Fail) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            fail(key, f"{_name(key)} must be an integer ({meaning}), not {_kind(value)}")
        if value < minimum:
            fail(key, f"{_name(key)} must be at least {minimum} ({meaning}), not {value}")

    return check


def _boolean(key: Key, value: Any, fail: Fail) -> None:
    if not isinstance(value, bool):
        fail(key, f"{_name(key)} must be true or false, not {_kind(value)}")


def _metadata_equals(key: Key, value: Any, fail: Fail) -> None:
    """``{ "general.architecture" = "llama", ... }``: metadata keys (quoted) to plain values."""
    if not isinstance(value, dict):
        fail(key, f'{_name(key)} must be a table such as {{ "general.architecture" = "llama" }}, not {_kind(value)}')
    if not value:
        fail(key, f"{_name(key)} is an empty table: a rule that checks nothing")
    for k, want in value.items():
        if isinstance(want, dict):  # `general.architecture = "x"` unquoted is a table in TOML
            inner = next(iter(want), "key")
            fail((*key, k), f'{_name((*key, k))} is a table: quote a dotted metadata key ("{k}.{inner}" = ...)')
        for item in want if isinstance(want, list) else [want]:
            if not isinstance(item, (str, int, float, bool)):
                fail((*key, k), f"{_name((*key, k))} must be a string, number, boolean or an array of them")


def _budget(key: Key, value: Any, fail: Fail) -> None:
    """``"24GiB"`` or a number of bytes, more than 0."""
    from ggufx.analysis.memory.estimate import parse_size

    if _is_number(value):
        size = value
    elif isinstance(value, str):
        if re.fullmatch(r"\s*[\d.]+(?:e\d+)?\s*", value):  # "24" read as bytes would fail every model
            fail(key, f'{_name(key)}: {value!r} has no unit: write "24GiB" (or bytes as a number, without quotes)')
        try:
            size = parse_size(value)
        except ValueError as e:
            fail(key, f"{_name(key)}: {e}")
    else:
        fail(key, f'{_name(key)} must be a size such as "24GiB" (or a number of bytes), not {_kind(value)}')
    if not size > 0:
        fail(key, f"{_name(key)} must be more than 0 bytes, not {value!r}")


def _companion(key: Key, value: Any, fail: Fail) -> None:
    if not isinstance(value, str) or not value:
        fail(key, f"[companions] {key[-1]} must be a path (a non-empty string), not {_kind(value)}")


def _file_types() -> set[str]:
    """Every ``general.file_type`` label (``Q4_K_M``...), as ``ggufx info`` prints them."""
    from ggufx.format.ggmltypes import _FILE_TYPES, file_type_label

    return {label for fid in _FILE_TYPES if (label := file_type_label(fid))}


def _dialects() -> set[str]:
    """Every tool-call dialect ``ggufx template info`` reports, and the other names of each family."""
    from ggufx.chat.dialects import DIALECTS

    return {n for d in DIALECTS for n in (d.name, *d.aliases)} | {"none", "unknown"}


def _cache_types() -> tuple[str, ...]:
    from ggufx.format.ggmltypes import CACHE_TYPES

    return CACHE_TYPES


# (section, key) -> the check of its value; every key of SCHEMA but [tensors]'s has one
_VALUE_CHECKS: dict[tuple[str, str], ValueCheck] = {
    ("model", "architecture"): _string_or_strings(),
    ("model", "file_type"): _one_of(_file_types, "file type"),
    ("model", "bpw"): _range_rule,
    ("model", "bpw_weights"): _range_rule,
    ("model", "parameters"): _range_rule,
    ("metadata", "required"): _strings,
    ("metadata", "forbidden"): _strings,
    ("metadata", "equals"): _metadata_equals,
    ("chat_template", "sha256"): _hex_digest(64, "a sha256"),
    ("chat_template", "dialect"): _string_or_strings(_dialects, "dialect"),
    ("chat_template", "lint_clean"): _boolean,
    ("memory", "ctx"): _integer(0, "tokens; 0 is the training context"),
    ("memory", "cache_type"): _one_of(_cache_types, "cache type"),
    ("memory", "budget"): _budget,
    ("memory", "parallel"): _integer(1, "sequences"),
    ("fingerprint", "equals"): _string,  # any other text fails the rule: it can be no fingerprint
    **{("companions", k): _companion for k in SCHEMA["companions"]},
}


def _validate_tensor_rule(pattern: str, rule: Any, fail: Fail) -> None:
    """A [tensors] entry: a valid regex mapped to a table of known keys naming known ggml types."""
    key: Key = ("tensors", pattern)
    what = f"tensor rule for {pattern!r}"
    try:
        re.compile(pattern)
    except re.error as e:
        fail(key, f"invalid regular expression {pattern!r}: {e}")
    if not isinstance(rule, dict):
        fail(key, f'{what} must be a table such as {{ min = "Q5_K" }}, not {_kind(rule)}')
    known = ", ".join(sorted(TENSOR_RULE_KEYS))
    for k in rule:
        if k not in TENSOR_RULE_KEYS:
            fail((*key, k), f"{what}: unknown key {k!r} (known: {known})")
    if not rule:
        fail(key, f"{what} is empty: give one of {known}")
    types = {k: _type((*key, k), rule[k], f"{what} {k}", fail) for k in ("min", "max", "type") if k in rule}
    if "allowed" in rule:
        allowed = rule["allowed"]
        if not isinstance(allowed, list) or not allowed:
            what_it_is = "an empty array" if allowed == [] else _kind(allowed)
            fail((*key, "allowed"), f"{what} allowed must be a non-empty array of ggml types, not {what_it_is}")
        for i, t in enumerate(allowed):
            _type((*key, "allowed", i), t, f"{what} allowed", fail)
    lo, hi = types.get("min"), types.get("max")
    if lo is not None and hi is not None and lo.bits_per_weight > hi.bits_per_weight:
        fail(
            key,
            f"{what}: min {lo.name} ({lo.bits_per_weight:g} bits per weight) is above max {hi.name} "
            f"({hi.bits_per_weight:g})",
        )


def _type(key: Key, name: Any, what: str, fail: Fail) -> GGMLType:
    """The ggml type called ``name``; anything else goes to ``fail``."""
    if not isinstance(name, str):
        fail(key, f'{what} must be a ggml type name (a string such as "Q5_K"), not {_kind(name)}')
    try:
        return ggml_type_by_name(name)
    except ValueError:
        fail(key, f"unknown ggml type {name!r} ({what})")


# --- where a key is in the TOML text -----------------------------------------------------------
# TOML parsers give values without lines, so the line of a key is found in the text: a table header
# (``[metadata.equals]``) sets the table the keys after it belong to, a ``key =`` line adds its
# (dotted, quoted) key, and the keys of the inline tables on that line (``bpw = { mn = 5.0 }``) are
# read too. Strings are skipped whole, so a ``#``, ``=`` or ``{`` inside one is not taken for TOML.
# The line reported is that of the deepest part of the key path found (the key, else the table
# holding it, else its section).

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_SIMPLE = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_SIMPLE}(?:\s*\.\s*{_SIMPLE})*"
_HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_EQ = re.compile(rf"\s*({_DOTTED})\s*=")
_PART = re.compile(rf"\s*({_SIMPLE})\s*\.?")
_STRING = {'"': re.compile(_BASIC), "'": re.compile(_LITERAL)}


def _split_key(dotted: str) -> tuple[str, ...]:
    """``a."b.c".'d'`` -> ("a", "b.c", "d"), the escapes of basic strings decoded."""
    import json

    parts = []
    for m in _PART.finditer(dotted):
        p = m.group(1)
        if p.startswith('"'):
            try:
                p = json.loads(p)
            except ValueError:  # an escape TOML has and JSON lacks (\e, \UXXXXXXXX): keep the text
                p = p[1:-1]
        elif p.startswith("'"):
            p = p[1:-1]
        parts.append(p)
    return tuple(parts)


def _toml_keys(text: str) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, key path) for every table header, key and inline-table key of a TOML text."""
    table: tuple[str, ...] = ()
    state = _LineState()
    for n, line in enumerate(text.splitlines(), 1):
        if state.string is not None:  # inside a multi-line string
            end = line.find(state.string)
            if end < 0:
                continue
            line, state.string = line[end + 3 :], None
        elif state.open:  # the next line of a value still open (an array spans lines)
            pass
        elif header := _HEADER.match(line):
            table = _split_key(header.group(1))
            yield n, table
            continue
        elif key := _KEY_EQ.match(line):
            state.current = table + _split_key(key.group(1))
            yield n, state.current
            line = line[key.end() :]
        else:
            continue
        yield from _value_keys(n, line, state)


class _LineState:
    """What a value leaves open at the end of a line: its open ``{`` and ``[`` (each with the key
    whose value it is), a multi-line string's delimiter, and the key whose value comes next."""

    def __init__(self) -> None:
        self.open: list[tuple[str, tuple[str, ...]]] = []
        self.string: str | None = None
        self.current: tuple[str, ...] = ()


def _value_keys(n: int, value: str, state: _LineState) -> Iterator[tuple[int, tuple[str, ...]]]:
    """The keys of the inline tables in ``value`` (what follows ``key =`` on line ``n``, or the next
    line of a value left open)."""
    open_ = state.open
    i, expect_key = 0, bool(open_) and open_[-1][0] == "{"  # TOML 1.1 lets an inline table span lines
    while i < len(value):
        if expect_key:
            expect_key = False
            if key := _KEY_EQ.match(value, i):
                state.current = open_[-1][1] + _split_key(key.group(1))
                yield n, state.current
                i = key.end()
                continue
        c = value[i]
        if value.startswith(('"""', "'''"), i):
            end = value.find(value[i : i + 3], i + 3)
            if end < 0:
                state.string = value[i : i + 3]
                return
            i = end + 3
            continue
        if c in _STRING:
            s = _STRING[c].match(value, i)
            i = s.end() if s else len(value)
            continue
        if c == "#":
            break
        if c in "{[":
            open_.append((c, state.current))
            expect_key = c == "{"
        elif c in "}]":
            if open_:
                state.current = open_.pop()[1]
        elif c == "," and open_ and open_[-1][0] == "{":
            expect_key = True
        i += 1


def _line_of_key(text: str, key: Key) -> int | None:
    """The line of ``key`` in ``text``: where it is written, else where its first dotted sub-key is
    (``bpw.min = 6`` writes ``bpw``), else the line of the longest part of it found (its section)."""
    path = tuple(k for k in key if isinstance(k, str))
    within, best, best_len = None, None, 0
    for n, found in _toml_keys(text):
        if found == path:
            return n
        if within is None and found[: len(path)] == path:
            within = n
        elif found == path[: len(found)] and len(found) > best_len:
            best, best_len = n, len(found)
    return within if within is not None else best


def check(model: GGUFModel, policy: dict[str, Any]) -> CheckReport:
    """Apply every rule of ``policy`` (as :func:`load_policy` returns it) to ``model``.

    The results come section by section, in the order of the schema above. A policy that
    :func:`validate_policy` refuses is a PolicyError here too, so that no rule can pass unchecked."""
    validate_policy(policy)
    rep = CheckReport(model.path)
    for section, rules_of in _SECTION_CHECKS:
        rep.results.extend(rules_of(model, policy.get(section, {})))
    return rep


def _check_model(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[model]: architecture, file type, bits per weight (all tensors, then weights only), parameters."""
    s = summarize(model)
    if "architecture" in rules:
        allowed = rules["architecture"] if isinstance(rules["architecture"], list) else [rules["architecture"]]
        yield RuleResult(
            "model.architecture", s.architecture in allowed, f"architecture {s.architecture!r}, allowed {allowed}"
        )
    if "file_type" in rules:
        yield RuleResult(
            "model.file_type",
            s.file_type_label == rules["file_type"],
            f"file type {s.file_type_label}, expected {rules['file_type']}",
        )
    if "bpw" in rules:
        yield _range(rules["bpw"], s.bpw, "bpw")
    if "bpw_weights" in rules:
        yield _range(rules["bpw_weights"], s.bpw_weights, "bpw_weights")
    if "parameters" in rules:
        yield _range(rules["parameters"], s.parameters, "parameters", "{:,}")


def _range(rule: Section, value: float, what: str, fmt: str = "{:.4f}") -> RuleResult:
    """``value`` within ``rule``'s optional ``min`` and ``max`` (both inclusive)."""
    lo, hi = rule.get("min"), rule.get("max")
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    bounds = " and ".join(
        s for s in ((f">= {lo}" if lo is not None else ""), (f"<= {hi}" if hi is not None else "")) if s
    )
    return RuleResult(f"model.{what}", ok, f"{what} {fmt.format(value)} {'is' if ok else 'is not'} {bounds}")


def _check_tensors(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[tensors]: one result per pattern."""
    for pattern, rule in rules.items():
        yield _tensor_rule(model, pattern, rule)


def _tensor_rule(model: GGUFModel, pattern: str, rule: Section) -> RuleResult:
    """Every tensor whose name matches ``pattern`` meets ``rule``; a pattern matching nothing fails."""
    rx = re.compile(pattern)
    matched = [t for t in model.tensors if rx.search(t.name)]
    offenders: dict[tuple[str, str], list[int | None]] = {}  # (role, type) -> layers
    for t in matched:
        if not _meets(t, rule):
            r = parse_name(t.name)
            offenders.setdefault((r.label, t.type.name), []).append(r.layer)
    name = f"tensors[{pattern}]"
    desc = ", ".join(f"{k} {v}" for k, v in rule.items())
    if not matched:
        return RuleResult(name, False, f"no tensor matches {pattern!r} ({desc})")
    if offenders:
        n = sum(len(v) for v in offenders.values())
        return RuleResult(name, False, f"{n} of {len(matched)} tensors break {desc}: {_describe(offenders)}")
    return RuleResult(name, True, f"all {len(matched)} tensors meet {desc}")


def _meets(t: TensorInfo, rule: Section) -> bool:
    """Whether ``t``'s type is within ``rule``: ``min``/``max`` by bits per weight, ``allowed`` or ``type`` by name."""
    bpw = t.type.bits_per_weight
    broken = (  # a tuple, not `or`: a rule naming an unknown type raises whichever bound the tensor breaks
        "min" in rule and bpw < ggml_type_by_name(rule["min"]).bits_per_weight,
        "max" in rule and bpw > ggml_type_by_name(rule["max"]).bits_per_weight,
        "allowed" in rule and t.type.name not in {ggml_type_by_name(x).name for x in rule["allowed"]},
        "type" in rule and t.type.name != ggml_type_by_name(rule["type"]).name,
    )
    return not any(broken)


def _describe(offenders: dict[tuple[str, str], list[int | None]]) -> str:
    """``role type (layers 0-3, 7)`` for each role and type that breaks a rule, sorted, ``; `` between."""
    from ggufx.analysis.diff import layer_ranges

    parts = []
    for (role, typ), layers in sorted(offenders.items()):
        numbered = [x for x in layers if x is not None]
        parts.append(f"{role} {typ}" + (f" (layers {layer_ranges(numbered)})" if numbered else ""))
    return "; ".join(parts)


def _check_metadata(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[metadata]: keys required, keys forbidden, then keys that must have a given value."""
    md = model.metadata
    for key in rules.get("required", []):
        yield RuleResult(f"metadata.required[{key}]", key in md, f"{key} {'present' if key in md else 'missing'}")
    for key in rules.get("forbidden", []):
        yield RuleResult(f"metadata.forbidden[{key}]", key not in md, f"{key} {'present' if key in md else 'absent'}")
    for key, want in rules.get("equals", {}).items():
        have = md.get(key)
        if isinstance(have, GGUFArray):
            have = have.tolist()
        yield RuleResult(f"metadata.equals[{key}]", have == want, f"{key} = {have!r}, expected {want!r}")


def _check_chat_template(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[chat_template]: the template's sha256, then what linting it finds; every rule fails without one."""
    if not rules:
        return
    tmpl = model.metadata.get_str("tokenizer.chat_template")
    if tmpl is None:
        for key in rules:
            yield RuleResult(f"chat_template.{key}", False, "the file has no chat template")
        return
    if "sha256" in rules:
        digest = hashlib.sha256(tmpl.encode("utf-8", "surrogateescape")).hexdigest()
        yield RuleResult("chat_template.sha256", digest == rules["sha256"].lower(), f"sha256 {digest}")
    if "dialect" in rules or rules.get("lint_clean"):
        yield from _lint_rules(model, tmpl, rules)


def _lint_rules(model: GGUFModel, tmpl: str, rules: Section) -> Iterator[RuleResult]:
    """The ``dialect`` and ``lint_clean`` rules, from one lint of the template with the file's tokens."""
    from ggufx.chat.lint import lint
    from ggufx.chat.sources import special_tokens

    md = model.metadata
    bos, eos = special_tokens(model)
    tokens = md.get("tokenizer.ggml.tokens")
    add_bos = md.get("tokenizer.ggml.add_bos_token")
    res = lint(tmpl, variables={"bos_token": bos or "", "eos_token": eos or ""}, tokens=tokens, add_bos_token=add_bos)
    if "dialect" in rules:
        from ggufx.chat.dialects import canonical

        allowed = rules["dialect"] if isinstance(rules["dialect"], list) else [rules["dialect"]]
        d = res.info.dialect if res.info else "unknown"
        ok = d in {a if a in ("none", "unknown") else canonical(a) for a in allowed}
        yield RuleResult("chat_template.dialect", ok, f"dialect {d}, allowed {allowed}")
    if rules.get("lint_clean"):
        probs = [p for p in res.problems if p.severity in ("error", "warning")]
        yield RuleResult(
            "chat_template.lint_clean",
            not probs,
            "lint clean" if not probs else "; ".join(f"{p.code}: {p.message}" for p in probs)[:500],
        )


def _check_memory(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[memory]: the GPU total (bytes) at ``ctx`` tokens and ``parallel`` sequences within ``budget``."""
    if not rules:
        return
    from ggufx.analysis.memory.buffers import MiB
    from ggufx.analysis.memory.estimate import estimate, parse_size

    ctype = rules.get("cache_type", "f16")
    e = estimate(
        model, int(rules.get("ctx", 0)), cache_type_k=ctype, cache_type_v=ctype, parallel=int(rules.get("parallel", 1))
    )
    b = rules.get("budget")
    budget = None if b is None else int(b) if isinstance(b, (int, float)) else parse_size(b)
    ok = budget is None or e.gpu_total <= budget
    yield RuleResult(
        "memory.budget",
        ok,
        f"{e.gpu_total / MiB:,.0f} MiB at {e.n_ctx:,} tokens ({ctype} cache)"
        + (f", budget {budget / MiB:,.0f} MiB" if budget else ""),
    )


def _check_fingerprint(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[fingerprint]: the hash of every tensor's data equals ``equals``."""
    if "equals" not in rules:
        return
    from ggufx.analysis.hashing import hash_model

    if is_remote(model.path):
        # unverifiable is not a pass: the rule fails, the others are still checked
        yield RuleResult(
            "fingerprint.equals",
            False,
            "cannot be checked on a remote file (hashing reads every tensor byte); check a downloaded copy",
        )
        return
    h = hash_model(model)
    yield RuleResult("fingerprint.equals", h.fingerprint == rules["equals"].lower(), f"fingerprint {h.fingerprint}")


def _check_companions(model: GGUFModel, rules: Section) -> Iterator[RuleResult]:
    """[companions]: each file given is one llama.cpp would accept beside the model (the rules of
    :mod:`ggufx.analysis.companions`); an unreadable companion is a GGUFError, as the model's own."""
    if not rules:
        return
    from ggufx.analysis import companions as c
    from ggufx.model import open_model

    checks: dict[str, tuple[Callable[[GGUFModel, GGUFModel], str | None], str]] = {
        "mmproj": (c.projector_incompatibility, "the projector fits the model"),
        "draft": (c.draft_incompatibility, "llama.cpp accepts it as the draft model"),
        "lora": (c.lora_incompatibility, "llama.cpp loads the adapter onto the model"),
        "imatrix": (c.imatrix_coverage, "every weight llama-quantize quantizes has importance data"),
        "control_vector": (c.control_vector_incompatibility, "llama.cpp applies the control vector to the model"),
    }
    for key in checks:
        if key not in rules:
            continue
        other = open_model(rules[key])
        rule, ok_text = checks[key]
        why = rule(model, other)
        yield RuleResult(f"companions.{key}", why is None, f"{other.path}: {why or ok_text}")


_SECTION_CHECKS: tuple[tuple[str, Callable[[GGUFModel, Section], Iterator[RuleResult]]], ...] = (
    ("model", _check_model),
    ("tensors", _check_tensors),
    ("metadata", _check_metadata),
    ("chat_template", _check_chat_template),
    ("memory", _check_memory),
    ("fingerprint", _check_fingerprint),
    ("companions", _check_companions),
)


def junit_xml(reports: list[CheckReport], policy_path: str) -> str:
    """JUnit XML (one testsuite per file, one testcase per rule), as CI systems display it."""
    from xml.sax.saxutils import escape, quoteattr

    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    total = sum(len(r.results) for r in reports)
    failures = sum(1 for r in reports for x in r.results if not x.passed)
    out.append(
        f'<testsuites name={quoteattr("ggufx check " + policy_path)} tests="{total}" failures="{failures}" errors="0">'
    )
    for rep in reports:
        fails = sum(1 for x in rep.results if not x.passed)
        out.append(
            f'  <testsuite name={quoteattr(rep.path)} tests="{len(rep.results)}" failures="{fails}" errors="0" '
            'skipped="0">'
        )
        for x in rep.results:
            out.append(f"    <testcase classname={quoteattr(rep.path)} name={quoteattr(x.rule)}>")
            if x.passed:
                out.append(f"      <system-out>{escape(x.reason)}</system-out>")
            else:
                out.append(
                    f'      <failure message={quoteattr(x.reason)} type="PolicyViolation">{escape(x.reason)}</failure>'
                )
            out.append("    </testcase>")
        out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"
