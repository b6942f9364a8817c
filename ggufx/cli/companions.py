"""Companion files of a model: ``ggufx imatrix`` (an importance matrix, ranked per role, beside the
types a quant gave each tensor)."""

from __future__ import annotations

import click

from ggufx.cli._common import emit, json_option, network_options, open_model, tablefmt_option


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", metavar="MODEL", help="A quant of the model: show the type each tensor got.")
@json_option
@tablefmt_option
@network_options
def imatrix(file: str, model_path: str | None, as_json: bool, tablefmt: str) -> None:
    """Read an importance matrix (llama-imatrix's GGUF output): per tensor the importance its
    statistics report (the mean of in_sum2 / counts, and the sum llama-imatrix prints as
    ∑ E[A²]) and its rank among the tensors of its role (1 = most important). Only the small
    in_sum2 and counts tensors are read.

    \b
    With --model, each tensor's type in that quant, the most common type of each role, and the
    tensors that rank in the top quartile of their role but were left at that type (and the
    reverse: outside the top quartile but given another type).

    \b
    Examples:
      ggufx imatrix imatrix.gguf
      ggufx imatrix imatrix.gguf --model model-Q4_K_M.gguf
      ggufx imatrix imatrix.gguf --json | jq '.tensors[] | select(.rank == 1)'
    """
    from ggufx import results
    from ggufx.render.text import imatrix_text

    quant = open_model(model_path) if model_path is not None else None
    res = results.imatrix(open_model(file), quant)
    emit(res, as_json, lambda: imatrix_text(res, tablefmt))
