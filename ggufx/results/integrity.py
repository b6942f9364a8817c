"""``hash``, ``manifest``, ``verify``, ``check`` and ``scan``: what a file is and whether it is what
it should be, as the JSON their ``--json`` prints (and the MCP tools ``hash``, ``verify``,
``list_models`` return: one builder for both)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

from ggufx.errors import GGUFError, InputError, ValidationError
from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from typing_extensions import NotRequired

    from ggufx.analysis.hashing import ModelHashes
    from ggufx.analysis.policy import CheckReport
    from ggufx.io.remote import RemoteConfig

ALGOS = ("xxh3-128", "sha256")  # ggufx.analysis.hashing.ALGOS
Progress = Callable[[int, int], None]


class HashResult(TypedDict):
    """``hash --json`` (:meth:`ggufx.analysis.hashing.ModelHashes.to_dict`)."""

    path: str
    algo: str
    fingerprint: str
    metadata_hash: str
    bytes_hashed: int
    facts: dict[str, Any]
    tensors: NotRequired[dict[str, dict[str, Any]]]
    metadata: NotRequired[dict[str, str]]


class ManifestEntry(TypedDict):
    path: str
    fingerprint: str
    metadata_hash: str


class ManifestResult(TypedDict):
    """``manifest -o FILE --json``: where it was written and each model's fingerprints."""

    output: str
    models: list[ManifestEntry]


class VerifyResult(TypedDict):
    manifest: str
    ok: bool
    results: list[dict[str, Any]]  # ggufx.analysis.hashing.Verification.to_dict()


class CheckResult(TypedDict):
    policy: str
    passed: bool
    files: list[dict[str, Any]]  # ggufx.analysis.policy.CheckReport.to_dict()


class ScanModel(TypedDict):
    """One row of ``scan --json`` (:meth:`ggufx.analysis.scan.ScanRow.to_dict`)."""

    kind: str | None
    group: str
    companions: list[str]
    companion_of: list[str]
    mismatches: list[dict[str, str]]
    name: str
    path: str
    source: str
    shards: int
    architecture: str | None
    parameters: int | None
    file_type: str | None
    bpw: float | None
    file_bytes: int | None
    dialect: str | None
    problems: list[str]


class ScanResult(TypedDict):
    roots: list[str]
    models: list[ScanModel]


# -- hashes -----------------------------------------------------------------------------------


def model_hashes(model: GGUFModel, algo: str = "xxh3-128", progress: Progress | None = None) -> ModelHashes:
    from ggufx.analysis.hashing import hash_model

    if algo not in ALGOS:
        raise InputError(f"algo must be one of {', '.join(ALGOS)}", "--algo")
    return hash_model(model, algo, progress=progress)


def hash_(
    model: GGUFModel, algo: str = "xxh3-128", per_tensor: bool = False, progress: Progress | None = None
) -> HashResult:
    """``ggufx hash``: the fingerprint, the metadata hash and (``per_tensor``) every hash."""
    return hash_result(model_hashes(model, algo, progress), per_tensor)


def hash_result(hashes: ModelHashes, per_tensor: bool = False) -> HashResult:
    return cast(HashResult, hashes.to_dict(per_tensor=per_tensor))


def write_manifest(
    hashes: list[ModelHashes], output: str, write: Callable[[str, dict[str, Any]], None]
) -> ManifestResult:
    """``ggufx manifest``: the manifest document of ``hashes`` handed to ``write(output, document)``
    (the face writes it as JSON text), and what ``--json`` says of it."""
    from ggufx.analysis.hashing import manifest

    doc = manifest(hashes)
    write(output, doc)
    return {
        "output": output,
        "models": [
            {"path": m["path"], "fingerprint": m["fingerprint"], "metadata_hash": m["metadata_hash"]}
            for m in doc["models"]
        ],
    }


def read_manifest(path: str) -> list[dict[str, Any]]:
    """The models a manifest records; one that is not a ggufx manifest is a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        models = doc["models"]
        if not isinstance(models, list):
            raise TypeError("'models' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValidationError(path, None, f"not a ggufx manifest ({e})") from None
    return models


def verify(manifest: str, targets: list[str], hashes_of: Callable[[str, str], ModelHashes]) -> VerifyResult:
    """``ggufx verify``: each target (default: the paths the manifest records) against the manifest's
    models in order; ``hashes_of(path, algo)`` hashes one file."""
    from ggufx.analysis.hashing import verify as check_one

    models = read_manifest(manifest)
    targets = targets or [m["path"] for m in models]
    if len(targets) > len(models):
        raise InputError(f"{len(targets)} files but the manifest has {len(models)} model(s)")
    results = [
        check_one(expected, hashes_of(path, expected.get("algo", "xxh3-128")))
        for expected, path in zip(models, targets)
    ]
    return {"manifest": manifest, "ok": all(r.ok for r in results), "results": [r.to_dict() for r in results]}


def verify_model(manifest: str, model: GGUFModel, local_path: str | None = None) -> VerifyResult:
    """The MCP tool ``verify``: one model against the manifest entry of the same file name (or the
    only one); the manifest is read from ``local_path`` (default ``manifest``)."""
    from ggufx.analysis.hashing import verify as check_one

    with open(local_path or manifest, encoding="utf-8") as f:
        doc = json.load(f)
    models = doc.get("models", []) if isinstance(doc, dict) else []
    entries = [m for m in models if os.path.basename(m.get("path", "")) == os.path.basename(model.path)]
    if not entries and len(models) == 1:
        entries = models
    if not entries:
        raise InputError(f"{manifest}: no model named {os.path.basename(model.path)} in the manifest", "manifest")
    result = check_one(entries[0], model_hashes(model, entries[0].get("algo", "xxh3-128")))
    return {"manifest": manifest, "ok": result.ok, "results": [result.to_dict()]}


# -- policy checks ----------------------------------------------------------------------------


@dataclass
class PolicyCheck:
    """``ggufx check``: one report per file (a file that cannot be read is a failed ``readable``
    rule, and ``unreadable`` says so: exit 2), and the policy's name."""

    policy: str
    reports: list[CheckReport]
    unreadable: list[str]  # the one-line errors of the files that could not be read

    def to_json(self) -> CheckResult:
        return {"policy": self.policy, "passed": self.passed, "files": [r.to_dict() for r in self.reports]}

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def junit(self) -> str:
        from ggufx.analysis.policy import junit_xml

        return junit_xml(self.reports, self.policy)


def check_files(
    files: list[str], policy_path: str | None, companions: dict[str, str | None], open_model: Callable[[str], GGUFModel]
) -> PolicyCheck:
    """Each file against the policy (a TOML file) and the companion files given (``mmproj``,
    ``draft``, ``lora``, ``imatrix``, ``control_vector``; they win over the policy's)."""
    from ggufx.analysis.policy import CheckReport, RuleResult, check, load_policy

    given = {k: v for k, v in companions.items() if v}
    if policy_path is None and not given:
        raise InputError("give --policy, or a companion file (--mmproj, --draft, --lora, --imatrix, --control-vector)")
    policy = load_policy(policy_path) if policy_path is not None else {}
    if given:
        policy["companions"] = {**policy.get("companions", {}), **given}
    out = PolicyCheck(policy_path or "(command line)", [], [])
    for f in files:
        try:
            out.reports.append(check(open_model(f), policy))
        except GGUFError as e:
            out.unreadable.append(e.one_line())
            out.reports.append(CheckReport(f, [RuleResult("readable", False, e.one_line())]))
    return out


# -- scan -------------------------------------------------------------------------------------


def scan_roots(dirs: list[str], hf_cache: bool = False, ollama: bool = False) -> list[str]:
    """The folders ``scan`` was asked for (each must exist), then the Hugging Face cache and the Ollama
    store (listed even where they are not: a machine without Ollama has nothing in it to scan)."""
    from ggufx.analysis.scan import default_ollama
    from ggufx.io.hub import default_hf_cache

    for d in dirs:  # a folder named on the command line that is not there is a typo, not an empty scan
        if "://" not in d and not os.path.isdir(d):
            raise InputError(f"{d}: no such folder")
    roots = list(dirs)
    if hf_cache:
        roots.append(default_hf_cache())
    if ollama:
        roots.append(default_ollama())
    if not roots:
        raise InputError("give a folder, --hf-cache or --ollama")
    return roots


def scan(
    roots: list[str],
    lint_templates: bool = True,
    remote: RemoteConfig | None = None,
    inside: Callable[[str], bool] | None = None,
) -> ScanResult:
    """Every GGUF under ``roots`` (folders, hf:// repositories; roots that are neither are listed
    but not read), audited from its header; ``inside`` keeps only the rows whose real path it
    accepts (the MCP server's roots)."""
    from ggufx.analysis.scan import scan as run_scan

    found = [r for r in roots if r.startswith("hf://") or os.path.isdir(r)]
    rows = run_scan(found, lint_templates=lint_templates, remote=remote)
    if inside is not None:
        rows = [r for r in rows if inside(os.path.realpath(r.path))]
    return {"roots": roots, "models": [cast(ScanModel, r.to_dict()) for r in rows]}


def needs_remote(roots: list[str]) -> bool:
    """Whether ``scan`` of ``roots`` reads the network (an hf:// repository among them)."""
    return any(r.startswith("hf://") for r in roots)
