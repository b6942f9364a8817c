"""Integrity commands: hash, manifest, verify."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from ggufx.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    emit,
    emit_json,
    json_option,
    network_options,
    open_model,
    progress_bar,
    remote_config,
    remote_options,
    write_text_atomic,
)
from ggufx.results import ALGOS

if TYPE_CHECKING:
    from ggufx.results.integrity import ModelHashes

ALGO_OPTION = click.option(
    "--algo",
    type=click.Choice(ALGOS),
    default="xxh3-128",
    show_default=True,
    help="Per-tensor hash; sha256 for a cryptographic one (the fingerprint is always xxh3-128).",
)


def _hash(path: str, algo: str, quiet: bool) -> ModelHashes:
    from ggufx.results import model_hashes

    model = open_model(path)
    with progress_bar(f"hashing {os.path.basename(path)}", not quiet) as progress:
        return model_hashes(model, algo, progress)


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
    from ggufx import results
    from ggufx.render.text import hash_text

    res = results.hash_result(_hash(file, algo, as_json), per_tensor)
    emit(res, as_json, lambda: hash_text(res, per_tensor))


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
    from ggufx.render.jsontext import dumps
    from ggufx.results import write_manifest

    res = write_manifest(
        [_hash(f, algo, False) for f in files], output, lambda path, doc: write_text_atomic(path, dumps(doc) + "\n")
    )
    if as_json:
        emit_json(res)
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
    from ggufx import results
    from ggufx.render.text import verify_text

    try:
        res = results.verify(manifest_file, list(files), lambda path, algo: _hash(path, algo, as_json))
    except results.InputError as e:
        raise click.UsageError(str(e)) from None
    emit(res, as_json, lambda: verify_text(res))
    if not res["ok"]:
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
    from ggufx import results
    from ggufx.render.text import check_lines

    options = {"mmproj": mmproj, "draft": draft, "lora": lora, "imatrix": imatrix, "control_vector": control_vector}
    try:
        outcome = results.check_files(list(files), policy_path, options, open_model)
    except results.InputError as e:
        raise click.UsageError(str(e)) from None
    for line in outcome.unreadable:
        click.echo(f"ggufx: error: {line}", err=True)
    if junit:
        write_text_atomic(junit, outcome.junit())
    res = outcome.to_json()
    if as_json:
        emit_json(res)
    else:
        for passed, line in check_lines(res):
            click.echo(f"{click.style('PASS', fg='green') if passed else click.style('FAIL', fg='red')} {line}")
    if outcome.unreadable:
        sys.exit(EXIT_USAGE)
    if not outcome.passed:
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
    from ggufx import results
    from ggufx.render.text import scan_text

    try:
        roots = results.scan_roots(list(dirs), hf_cache, ollama)
    except results.InputError as e:
        raise click.UsageError(str(e)) from None
    remote = remote_config() if results.needs_remote(roots) else None
    res = results.scan(roots, lint_templates=not no_lint, remote=remote)
    emit(res, as_json, lambda: scan_text(res))
    if any(r["problems"] for r in res["models"]):
        sys.exit(EXIT_CHECK_FAILED)
