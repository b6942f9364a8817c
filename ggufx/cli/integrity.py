"""Integrity commands: hash, manifest, verify."""

from __future__ import annotations

import json
import os
import sys

import click

from ggufx.analysis.hashing import ALGOS, ModelHashes, Verification
from ggufx.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    dumps,
    emit_json,
    json_option,
    network_options,
    open_model,
    remote_config,
    remote_options,
    write_text_atomic,
)

ALGO_OPTION = click.option(
    "--algo",
    type=click.Choice(ALGOS),
    default="xxh3-128",
    show_default=True,
    help="Per-tensor hash; sha256 for a cryptographic one (the fingerprint is always xxh3-128).",
)


def _hash(path: str, algo: str, quiet: bool) -> ModelHashes:
    from ggufx.analysis.hashing import hash_model

    model = open_model(path)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label=f"hashing {os.path.basename(path)}", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        return hash_model(model, algo, progress=None if quiet or not sys.stderr.isatty() else progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@click.command("hash")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--per-tensor", is_flag=True, help="Also list every tensor's hash.")
@ALGO_OPTION
@json_option
def hash_(file: str, per_tensor: bool, algo: str, as_json: bool) -> None:
    """Hash each tensor's data and print the model fingerprint: it ignores metadata (a fixed chat
    template) and how the model is split into shards, and changes if any tensor byte changes.
    The construction is documented in the README.

    \b
    Examples:
      ggufx hash model.gguf
      ggufx hash model-00001-of-00003.gguf --per-tensor --json
      ggufx hash model.gguf --algo sha256
    """
    h = _hash(file, algo, as_json)
    if as_json:
        emit_json(h.to_dict(per_tensor=per_tensor))
        return
    click.echo(f"fingerprint    {h.fingerprint}")
    click.echo(f"metadata hash  {h.metadata_hash}")
    if per_tensor:
        for name, t in h.tensors.items():
            click.echo(f"{t['hash']}  {t['type']:<8} {name}")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write manifest.json.")
@ALGO_OPTION
@json_option
def manifest(files: tuple[str, ...], output: str, algo: str, as_json: bool) -> None:
    """Record fingerprints, per-tensor hashes, per-key metadata hashes and key facts of FILES.

    \b
    Examples:
      ggufx manifest model.gguf -o manifest.json
      ggufx manifest *.gguf -o release-manifest.json --algo sha256
    """
    from ggufx.analysis.hashing import manifest as make_manifest

    doc = make_manifest([_hash(f, algo, False) for f in files])
    write_text_atomic(output, dumps(doc) + "\n")
    if as_json:
        emit_json(
            {
                "output": output,
                "models": [
                    {"path": m["path"], "fingerprint": m["fingerprint"], "metadata_hash": m["metadata_hash"]}
                    for m in doc["models"]
                ],
            }
        )
    else:
        click.echo(f"wrote {output}: {len(files)} model(s)", err=True)


@click.command()
@click.argument("manifest_file", type=click.Path(dir_okay=False, exists=True))
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@json_option
def verify(manifest_file: str, files: tuple[str, ...], as_json: bool) -> None:
    """Check files against a manifest: which tensors or metadata keys differ. Exit 1 when anything
    differs. Without FILES the paths recorded in the manifest are checked; with FILES they are
    matched to the manifest's models in order.

    \b
    Examples:
      ggufx verify manifest.json
      ggufx verify manifest.json downloaded.gguf --json
    """
    from ggufx.analysis.hashing import verify as check

    try:
        with open(manifest_file, encoding="utf-8") as f:
            doc = json.load(f)
        models = doc["models"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        click.echo(f"ggufx: error: {manifest_file}: not a ggufx manifest ({e})", err=True)
        sys.exit(EXIT_USAGE)
    targets = list(files) or [m["path"] for m in models]
    if len(targets) > len(models):
        raise click.UsageError(f"{len(targets)} files but the manifest has {len(models)} model(s)")
    results: list[Verification] = []
    for expected, path in zip(models, targets):
        results.append(check(expected, _hash(path, expected.get("algo", "xxh3-128"), as_json)))
    if as_json:
        emit_json(
            {"manifest": manifest_file, "ok": all(r.ok for r in results), "results": [r.to_dict() for r in results]}
        )
    else:
        for r in results:
            click.echo(f"{'OK  ' if r.ok else 'FAIL'} {r.path}: {r.verdict}")
            for label, names in (
                ("tensors changed", r.tensors_changed),
                ("tensors added", r.tensors_added),
                ("tensors removed", r.tensors_removed),
                ("metadata changed", r.metadata_changed),
                ("metadata added", r.metadata_added),
                ("metadata removed", r.metadata_removed),
            ):
                if names:
                    click.echo(f"     {label}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    if not all(r.ok for r in results):
        sys.exit(EXIT_CHECK_FAILED)


@click.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    help="A TOML policy (schema in the README); optional when a companion file is given.",
)
@click.option("--mmproj", type=click.Path(dir_okay=False), help="A projector that must fit the model.")
@click.option("--draft", type=click.Path(dir_okay=False), help="A draft model llama.cpp must accept.")
@click.option("--lora", type=click.Path(dir_okay=False), help="A LoRA adapter llama.cpp must load onto the model.")
@click.option("--imatrix", type=click.Path(dir_okay=False), help="An imatrix that must cover every quantized weight.")
@click.option(
    "--control-vector",
    "control_vector",
    type=click.Path(dir_okay=False),
    help="A control vector llama.cpp must apply to the model.",
)
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML here, for CI systems.")
@json_option
@remote_options
def check_(
    files: tuple[str, ...],
    policy_path: str | None,
    mmproj: str | None,
    draft: str | None,
    lora: str | None,
    imatrix: str | None,
    control_vector: str | None,
    junit: str | None,
    as_json: bool,
) -> None:
    """Check files against a policy: allowed/minimum types per tensor regex, BPW and parameter
    ranges, architecture, required/forbidden metadata, chat template sha256/dialect/lint, memory at a
    context under a budget, fingerprint. One line per rule; exit 0 all passed, 1 a rule failed,
    2 a bad policy or an unreadable file.

    \b
    Examples:
      ggufx check model.gguf --policy policy.toml
      ggufx check *.gguf --policy policy.toml --junit results.xml --json
      ggufx check model.gguf --mmproj mmproj.gguf --lora adapter.gguf --imatrix imatrix.gguf

    \b
    Companion files (--mmproj, --draft, --lora, --imatrix, --control-vector, or [companions] in
    the policy with paths relative to it; the options win) must be ones llama.cpp accepts beside
    the model: the projector's output width is the model's embedding, the draft model's vocabulary
    matches, every adapter tensor names a base tensor of the right shape, the imatrix covers every
    weight llama-quantize quantizes, the control vector's directions are the model's width.
    """
    from ggufx.analysis.policy import CheckReport, RuleResult, check, junit_xml, load_policy
    from ggufx.errors import GGUFError

    options = {"mmproj": mmproj, "draft": draft, "lora": lora, "imatrix": imatrix, "control_vector": control_vector}
    given = {k: v for k, v in options.items() if v}
    if policy_path is None and not given:
        raise click.UsageError(
            "give --policy, or a companion file (--mmproj, --draft, --lora, --imatrix, --control-vector)"
        )
    policy = load_policy(policy_path) if policy_path is not None else {}
    if given:
        policy["companions"] = {**policy.get("companions", {}), **given}
    policy_path = policy_path or "(command line)"
    reports = []
    unreadable = False
    for f in files:
        try:
            reports.append(check(open_model(f), policy))
        except GGUFError as e:
            unreadable = True
            reports.append(CheckReport(f, [RuleResult("readable", False, e.one_line())]))
            click.echo(f"ggufx: error: {e.one_line()}", err=True)
    if junit:
        with open(junit, "w", encoding="utf-8") as fh:
            fh.write(junit_xml(reports, policy_path))
    if as_json:
        emit_json(
            {"policy": policy_path, "passed": all(r.passed for r in reports), "files": [r.to_dict() for r in reports]}
        )
    else:
        for rep in reports:
            for x in rep.results:
                tag = click.style("PASS", fg="green") if x.passed else click.style("FAIL", fg="red")
                click.echo(f"{tag} {rep.path}: {x.rule}: {x.reason}")
    if unreadable:
        sys.exit(EXIT_USAGE)
    if not all(r.passed for r in reports):
        sys.exit(EXIT_CHECK_FAILED)


@click.command()
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option(
    "--hf-cache",
    is_flag=True,
    help="Also scan the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).",
)
@click.option("--ollama", is_flag=True, help="Also scan the Ollama store (OLLAMA_MODELS or ~/.ollama/models).")
@click.option("--no-lint", is_flag=True, help="Skip linting chat templates (faster).")
@json_option
@network_options
def scan(dirs: tuple[str, ...], hf_cache: bool, ollama: bool, no_lint: bool, as_json: bool) -> None:
    """Find GGUF models in folders (split shards grouped), a Hugging Face cache or an Ollama store,
    and audit each from its header: kind, architecture, parameters, type, BPW, size, template
    dialect and problems (corrupt header, missing shard, template errors). Companion files
    (projector, LoRA adapter, imatrix, control vector) are checked against the models in their
    folder (or Ollama manifest) with llama.cpp's loading rules; one that fits none of them is a
    problem. Bad files are rows, never the end of the scan. Exit 1 when any file has a problem.

    \b
    Examples:
      ggufx scan ~/models
      ggufx scan --hf-cache --ollama
      ggufx scan ~/models --json | jq '.models[] | select(.problems != [])'
      ggufx scan hf://unsloth/Qwen3-8B-GGUF      # every quant of a Hub repository, headers only
    """
    from ggufx.analysis.scan import default_ollama
    from ggufx.analysis.scan import scan as run_scan
    from ggufx.io.hub import default_hf_cache
    from ggufx.render import table
    from ggufx.render.text import human_bytes, human_params

    roots = list(dirs)
    if hf_cache:
        roots.append(default_hf_cache())
    if ollama:
        roots.append(default_ollama())
    if not roots:
        raise click.UsageError("give a folder, --hf-cache or --ollama")
    found = [r for r in roots if r.startswith("hf://") or os.path.isdir(r)]
    remote = remote_config() if any(r.startswith("hf://") for r in found) else None
    rows = run_scan(found, lint_templates=not no_lint, remote=remote)
    if as_json:
        emit_json({"roots": roots, "models": [r.to_dict() for r in rows]})
    else:
        click.echo(
            table.render(
                [
                    (
                        r.name,
                        r.kind or "-",
                        r.architecture or "-",
                        human_params(r.parameters) if r.parameters else "-",
                        r.file_type or "-",
                        f"{r.bpw:.2f}" if r.bpw is not None else "-",
                        human_bytes(r.file_bytes) if r.file_bytes else "-",
                        r.dialect or "-",
                        "; ".join(r.problems) or "ok",
                    )
                    for r in rows
                ],
                ("file", "kind", "arch", "params", "type", "BPW", "size", "template", "problems"),
                align="lllrlrrll",
            )
        )
        pairs = [
            f"  {r.kind} {r.name}: fits {len(r.companion_of)} of {len(r.companion_of) + len(r.mismatches)} model(s)"
            + "".join(f"\n    not {m['model']}: {m['reason']}" for m in r.mismatches)
            for r in rows
            if r.companion_of or r.mismatches
        ]
        if pairs:
            click.echo("\ncompanion files and the models beside them:\n" + "\n".join(pairs))
        n_models = sum(1 for r in rows if r.kind in ("model", None))
        extra = f"{len(rows) - n_models} companion file(s), " if len(rows) > n_models else ""
        click.echo(f"\n{n_models} model(s), {extra}{sum(1 for r in rows if r.problems)} with problems")
    if any(r.problems for r in rows):
        sys.exit(EXIT_CHECK_FAILED)
