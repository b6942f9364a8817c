"""Policy checks for CI: a TOML policy of rules, each a PASS or FAIL with a reason.

Schema (every section optional; unknown sections or keys are errors that name their line):

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
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


def _line_of(text: str, needle: str) -> int | None:
    """The number (from 1) of the first line of ``text`` containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None


def load_policy(path: str) -> dict[str, Any]:
    """Parse and validate a policy file; a typo is a PolicyError naming its line."""
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

    def fail(needle: str, msg: str) -> NoReturn:
        """Raise ``msg`` as a PolicyError naming the first line that contains ``needle``."""
        line = _line_of(text, needle)
        raise PolicyError(path, None, (f"line {line}: " if line else "") + msg)

    for section, body in doc.items():
        if section not in SCHEMA:
            fail(f"[{section}", f"unknown section [{section}] (known: {', '.join(sorted(SCHEMA))})")
        if not isinstance(body, dict):
            fail(section, f"[{section}] must be a table")
        if section == "tensors":
            for pattern, rule in body.items():
                _validate_tensor_rule(pattern, rule, partial(fail, pattern))
        elif section == "companions":
            for key, value in body.items():
                if key not in SCHEMA[section]:
                    fail(key, f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(SCHEMA[section]))})")
                if not isinstance(value, str) or not value:
                    fail(key, f"[companions] {key} must be a path (a string)")
                body[key] = companion_path(path, value)
        else:
            for key in body:
                if key not in SCHEMA[section]:
                    fail(key, f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(SCHEMA[section]))})")
    return doc


def companion_path(policy_path: str, value: str) -> str:
    """A ``[companions]`` path: relative to the policy file's folder (URLs and absolute paths kept)."""
    import os

    if is_remote(value) or os.path.isabs(value):
        return value
    return os.path.join(os.path.dirname(policy_path), value)


def _validate_tensor_rule(pattern: str, rule: object, fail: Callable[[str], NoReturn]) -> None:
    """A [tensors] entry: a valid regex mapped to a table of known keys naming known ggml types."""
    try:
        re.compile(pattern)
    except re.error as e:
        fail(f"invalid regular expression {pattern!r}: {e}")
    if not isinstance(rule, dict) or not rule or set(rule) - TENSOR_RULE_KEYS:
        fail(f"tensor rule for {pattern!r} must use {', '.join(sorted(TENSOR_RULE_KEYS))}")
    for key in ("min", "max", "type"):
        if key in rule:
            _type(rule[key], fail)
    for t in rule.get("allowed", []):
        _type(t, fail)


def _type(name: object, fail: Callable[[str], NoReturn]) -> GGMLType:
    """The ggml type called ``name``; an unknown name goes to ``fail``."""
    try:
        return ggml_type_by_name(str(name))
    except ValueError:
        fail(f"unknown ggml type {name!r}")


def check(model: GGUFModel, policy: dict[str, Any]) -> CheckReport:
    """Apply every rule of ``policy`` (as :func:`load_policy` returns it) to ``model``.

    The results come section by section, in the order of the schema above."""
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
        yield RuleResult("chat_template.sha256", digest == rules["sha256"], f"sha256 {digest}")
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
        allowed = rules["dialect"] if isinstance(rules["dialect"], list) else [rules["dialect"]]
        d = res.info.dialect if res.info else "unknown"
        yield RuleResult("chat_template.dialect", d in allowed, f"dialect {d}, allowed {allowed}")
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
    budget = parse_size(str(rules["budget"])) if "budget" in rules else None
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
    yield RuleResult("fingerprint.equals", h.fingerprint == rules["equals"], f"fingerprint {h.fingerprint}")


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
