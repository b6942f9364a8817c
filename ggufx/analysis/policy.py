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
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ggufx.errors import GGUFError
from ggufx.model import GGUFModel
from ggufx.io.sources import is_remote
from ggufx.format.values import GGUFArray
from ggufx.analysis.summary import summarize

SCHEMA: dict[str, set[str]] = {
    "model": {"architecture", "file_type", "bpw", "bpw_weights", "parameters"},
    "tensors": set(),  # any regex
    "metadata": {"required", "forbidden", "equals"},
    "chat_template": {"sha256", "dialect", "lint_clean"},
    "memory": {"ctx", "cache_type", "budget", "parallel"},
    "fingerprint": {"equals"},
}
TENSOR_RULE_KEYS = {"min", "max", "allowed", "type"}


class PolicyError(GGUFError):
    """The policy file itself is wrong (exit code 2)."""


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

    def fail(needle: str, msg: str) -> None:
        line = _line_of(text, needle)
        raise PolicyError(path, None, (f"line {line}: " if line else "") + msg)

    for section, body in doc.items():
        if section not in SCHEMA:
            fail(f"[{section}", f"unknown section [{section}] (known: {', '.join(sorted(SCHEMA))})")
        if not isinstance(body, dict):
            fail(section, f"[{section}] must be a table")
        if section == "tensors":
            for pattern, rule in body.items():
                try:
                    re.compile(pattern)
                except re.error as e:
                    fail(pattern, f"invalid regular expression {pattern!r}: {e}")
                if not isinstance(rule, dict) or not rule or set(rule) - TENSOR_RULE_KEYS:
                    fail(pattern, f"tensor rule for {pattern!r} must use {', '.join(sorted(TENSOR_RULE_KEYS))}")
                for key in ("min", "max", "type"):
                    if key in rule:
                        _type(rule[key], lambda m: fail(pattern, m))
                for t in rule.get("allowed", []):
                    _type(t, lambda m: fail(pattern, m))
        else:
            for key in body:
                if key not in SCHEMA[section]:
                    fail(key, f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(SCHEMA[section]))})")
    return doc


def _type(name: Any, fail) -> Any:
    from ggufx.format.ggmltypes import ggml_type_by_name

    try:
        return ggml_type_by_name(str(name))
    except ValueError:
        fail(f"unknown ggml type {name!r}")


def _range(rule: Any, value: float, what: str, fmt: str = "{:.4f}") -> RuleResult:
    lo, hi = rule.get("min"), rule.get("max")
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    bounds = " and ".join(s for s in ((f">= {lo}" if lo is not None else ""), (f"<= {hi}" if hi is not None else "")) if s)
    return RuleResult(f"model.{what}", ok, f"{what} {fmt.format(value)} {'is' if ok else 'is not'} {bounds}")


def check(model: GGUFModel, policy: dict[str, Any]) -> CheckReport:
    from ggufx.analysis.diff import layer_ranges
    from ggufx.format.ggmltypes import ggml_type_by_name
    from ggufx.analysis.roles import parse_name

    rep = CheckReport(model.path)
    add = rep.results.append
    s = summarize(model)
    m = policy.get("model", {})
    if "architecture" in m:
        allowed = m["architecture"] if isinstance(m["architecture"], list) else [m["architecture"]]
        add(RuleResult("model.architecture", s.architecture in allowed, f"architecture {s.architecture!r}, allowed {allowed}"))
    if "file_type" in m:
        add(RuleResult("model.file_type", s.file_type_label == m["file_type"], f"file type {s.file_type_label}, expected {m['file_type']}"))
    if "bpw" in m:
        add(_range(m["bpw"], s.bpw, "bpw"))
    if "bpw_weights" in m:
        add(_range(m["bpw_weights"], s.bpw_weights, "bpw_weights"))
    if "parameters" in m:
        add(_range(m["parameters"], s.parameters, "parameters", "{:,}"))

    for pattern, rule in policy.get("tensors", {}).items():
        rx = re.compile(pattern)
        matched = [t for t in model.tensors if rx.search(t.name)]
        bad: dict[tuple[str, str], list[int | None]] = {}
        for t in matched:
            bpw = t.type.bits_per_weight
            ok = True
            if "min" in rule and bpw < ggml_type_by_name(rule["min"]).bits_per_weight:
                ok = False
            if "max" in rule and bpw > ggml_type_by_name(rule["max"]).bits_per_weight:
                ok = False
            if "allowed" in rule and t.type.name not in {ggml_type_by_name(x).name for x in rule["allowed"]}:
                ok = False
            if "type" in rule and t.type.name != ggml_type_by_name(rule["type"]).name:
                ok = False
            if not ok:
                r = parse_name(t.name)
                bad.setdefault((r.label, t.type.name), []).append(r.layer)
        desc = ", ".join(f"{k} {v}" for k, v in rule.items())
        if not matched:
            add(RuleResult(f"tensors[{pattern}]", False, f"no tensor matches {pattern!r} ({desc})"))
        elif bad:
            parts = [f"{role} {typ}" + (f" (layers {layer_ranges([x for x in ls if x is not None])})" if any(x is not None for x in ls) else "")
                     for (role, typ), ls in sorted(bad.items())]
            n = sum(len(v) for v in bad.values())
            add(RuleResult(f"tensors[{pattern}]", False, f"{n} of {len(matched)} tensors break {desc}: {'; '.join(parts)}"))
        else:
            add(RuleResult(f"tensors[{pattern}]", True, f"all {len(matched)} tensors meet {desc}"))

    md = policy.get("metadata", {})
    for key in md.get("required", []):
        add(RuleResult(f"metadata.required[{key}]", key in model.metadata, f"{key} {'present' if key in model.metadata else 'missing'}"))
    for key in md.get("forbidden", []):
        add(RuleResult(f"metadata.forbidden[{key}]", key not in model.metadata, f"{key} {'present' if key in model.metadata else 'absent'}"))
    for key, want in md.get("equals", {}).items():
        have = model.metadata[key] if key in model.metadata else None
        if isinstance(have, GGUFArray):
            have = have.tolist()
        add(RuleResult(f"metadata.equals[{key}]", have == want, f"{key} = {have!r}, expected {want!r}"))

    ct = policy.get("chat_template", {})
    if ct:
        tmpl = model.metadata.get_str("tokenizer.chat_template")
        if tmpl is None:
            for key in ct:
                add(RuleResult(f"chat_template.{key}", False, "the file has no chat template"))
        else:
            if "sha256" in ct:
                digest = hashlib.sha256(tmpl.encode("utf-8", "surrogateescape")).hexdigest()
                add(RuleResult("chat_template.sha256", digest == ct["sha256"], f"sha256 {digest}"))
            if "dialect" in ct or ct.get("lint_clean"):
                from ggufx.chat.lint import lint
                from ggufx.chat.sources import special_tokens

                bos, eos = special_tokens(model)
                tokens = model.metadata["tokenizer.ggml.tokens"] if "tokenizer.ggml.tokens" in model.metadata else None
                add_bos = model.metadata["tokenizer.ggml.add_bos_token"] if "tokenizer.ggml.add_bos_token" in model.metadata else None
                res = lint(tmpl, variables={"bos_token": bos or "", "eos_token": eos or ""}, tokens=tokens, add_bos_token=add_bos)
                if "dialect" in ct:
                    allowed = ct["dialect"] if isinstance(ct["dialect"], list) else [ct["dialect"]]
                    d = res.info.dialect if res.info else "unknown"
                    add(RuleResult("chat_template.dialect", d in allowed, f"dialect {d}, allowed {allowed}"))
                if ct.get("lint_clean"):
                    probs = [p for p in res.problems if p.severity in ("error", "warning")]
                    add(RuleResult("chat_template.lint_clean", not probs,
                                   "lint clean" if not probs else "; ".join(f"{p.code}: {p.message}" for p in probs)[:500]))

    mem = policy.get("memory", {})
    if mem:
        from ggufx.analysis.memory import MiB, estimate, parse_size

        ctype = mem.get("cache_type", "f16")
        e = estimate(model, int(mem.get("ctx", 0)), cache_type_k=ctype, cache_type_v=ctype, parallel=int(mem.get("parallel", 1)))
        budget = parse_size(str(mem["budget"])) if "budget" in mem else None
        ok = budget is None or e.gpu_total <= budget
        add(RuleResult("memory.budget", ok, f"{e.gpu_total / MiB:,.0f} MiB at {e.n_ctx:,} tokens ({ctype} cache)"
                       + (f", budget {budget / MiB:,.0f} MiB" if budget else "")))

    fp = policy.get("fingerprint", {})
    if "equals" in fp:
        from ggufx.analysis.hashing import hash_model

        if is_remote(model.path):
            # unverifiable is not a pass: the rule fails, the others are still checked
            add(RuleResult("fingerprint.equals", False, "cannot be checked on a remote file (hashing reads every tensor "
                                                        "byte); check a downloaded copy"))
        else:
            h = hash_model(model)
            add(RuleResult("fingerprint.equals", h.fingerprint == fp["equals"], f"fingerprint {h.fingerprint}"))
    return rep


def junit_xml(reports: list[CheckReport], policy_path: str) -> str:
    """JUnit XML (one testsuite per file, one testcase per rule), as CI systems display it."""
    from xml.sax.saxutils import escape, quoteattr

    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    total = sum(len(r.results) for r in reports)
    failures = sum(1 for r in reports for x in r.results if not x.passed)
    out.append(f'<testsuites name={quoteattr("ggufx check " + policy_path)} tests="{total}" failures="{failures}" errors="0">')
    for rep in reports:
        fails = sum(1 for x in rep.results if not x.passed)
        out.append(f'  <testsuite name={quoteattr(rep.path)} tests="{len(rep.results)}" failures="{fails}" errors="0" skipped="0">')
        for x in rep.results:
            out.append(f'    <testcase classname={quoteattr(rep.path)} name={quoteattr(x.rule)}>')
            if x.passed:
                out.append(f"      <system-out>{escape(x.reason)}</system-out>")
            else:
                out.append(f'      <failure message={quoteattr(x.reason)} type="PolicyViolation">{escape(x.reason)}</failure>')
            out.append("    </testcase>")
        out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"
