"""What a llama.cpp log says it allocated: the buffer lines and the ``memory breakdown`` table.

llama.cpp prints every buffer at ``-v`` (``load_tensors: CUDA0 model buffer size = 92.17 MiB``,
``llama_kv_cache: ...``, ``llama_memory_recurrent: ... RS buffer size``, ``llama_context: ... output
buffer size``, ``sched_reserve: ... compute buffer size``) and, at exit, a table of MiB per device.
A log that ran the ``--fit`` dry run first prints those lines twice: only the last model load counts.
Lines of a draft model or of a multimodal projector are not the main model's and are set aside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LlamaLog", "parse_log"]

_BUFFER = re.compile(
    r"(?P<fn>load_tensors|llama_kv_cache|llama_memory_recurrent|llama_context|sched_reserve|llama_dsv4_comp_state):\s+"
    r"(?P<buft>\S+)\s+(?:DSV4 \w+ )?(?P<kind>model|KV|RS|output|compute|state) buffer size =\s+(?P<mib>[\d.]+) MiB"
)
_EXACT_COMPUTE = re.compile(r"~llama_context:\s+(?P<buft>\S+) compute buffer size is\s+(?P<mib>[\d.]+) MiB")
_DEVICE = re.compile(r"using device (?P<name>\S+) \((?P<desc>[^)]*)\).* - (?P<free>\d+) MiB free")
_BREAKDOWN = re.compile(
    r"memory_breakdown_print: \|\s+- (?P<name>.+?)\s+\|\s+(?:(?P<total>\d+) = (?P<free>\d+) \+ \()?\s*"
    r"(?P<self>\d+) =\s+(?P<model>\d+) \+\s+(?P<context>\d+) \+\s+(?P<compute>\d+)\)?"
)
_PARAM = re.compile(
    r"llama_context: (?P<key>n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|flash_attn|kv_unified)\s+= (?P<v>\S+)"
)
KINDS = {"model": "model", "KV": "kv", "RS": "recurrent", "output": "output", "compute": "compute", "state": "state"}


@dataclass(slots=True)
class LlamaLog:
    """Buffers in MiB as llama.cpp printed them, by kind (model, kv, recurrent, output, compute) and
    buffer type (``CUDA0``, ``CPU_Mapped``, ``CUDA_Host``...); several lines of one kind and type
    (the two caches of a sliding-window model) are added up."""

    buffers: dict[str, dict[str, float]] = field(default_factory=dict)
    devices: list[tuple[str, int]] = field(default_factory=list)  # (name, free MiB) at load
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)  # row -> {model, context, compute, self}
    context: dict[str, str] = field(default_factory=dict)  # n_ctx, n_ubatch, flash_attn...
    pipeline_parallel: bool = False
    errors: list[str] = field(default_factory=list)
    draft: LlamaLog | None = None  # the draft model's buffers (speculative decoding), if it loaded one
    projector: dict[str, float] = field(default_factory=dict)  # mmproj: "weights" and compute per buffer type


def parse_log(text: str) -> LlamaLog:
    """The main model's buffers from a llama.cpp log (``-v``)."""
    main, _, draft_text = text.partition("loading draft model")
    log = _parse(main)
    if draft_text:
        log.draft = _parse(draft_text)
    return log


_PROJ_WEIGHTS = re.compile(r"load_hparams: model size:\s+(?P<mib>[\d.]+) MiB")
_PROJ_COMPUTE = re.compile(r"reserve_compute_meta:\s+(?P<buft>\S+) compute buffer size =\s+(?P<mib>[\d.]+) MiB")


def _parse(text: str) -> LlamaLog:
    log = LlamaLog()
    exact_compute: dict[str, float] = {}
    before_context: dict[str, float] = {}  # the compute figures before the current context's reservations
    reserved = False  # whether the current context has reserved its graphs already
    for raw in text.splitlines():
        line = raw.strip()
        if "load_tensors: loading model tensors" in line and log.buffers.get("model"):
            log.buffers.clear()  # a second load in the same log (the fit dry run came first): keep the last
        if "llama_context: constructing llama_context" in line:
            before_context, reserved = dict(log.buffers.get("compute", {})), False
        elif "sched_reserve: reserving ..." in line:
            # a context reserving again (a drafter after set_embeddings_nextn, llama-context.cpp): its buffers are
            # sized anew, the figures of its earlier reservation replaced, not added
            if reserved:
                log.buffers["compute"] = dict(before_context)
            reserved = True
        if m := _PROJ_WEIGHTS.search(line):
            log.projector["weights"] = float(m["mib"])
            continue
        if m := _PROJ_COMPUTE.search(line):
            log.projector[m["buft"]] = float(m["mib"])
            continue
        if m := _DEVICE.search(line):
            entry = (m["name"], int(m["free"]))
            if entry[0] not in {d for d, _ in log.devices}:
                log.devices.append(entry)
        elif m := _BUFFER.search(line):
            kind = KINDS[m["kind"]]
            per = log.buffers.setdefault(kind, {})
            per[m["buft"]] = round(per.get(m["buft"], 0.0) + float(m["mib"]), 2)
        elif m := _EXACT_COMPUTE.search(line):
            exact_compute.setdefault(m["buft"], float(m["mib"]))
        elif m := _BREAKDOWN.search(line):
            name = m["name"].split(" (")[0].strip()
            log.breakdown[name] = {k: int(m[k]) for k in ("self", "model", "context", "compute")}
        elif m := _PARAM.search(line):
            log.context.setdefault(m["key"], m["v"])
        elif "pipeline parallelism enabled" in line:
            log.pipeline_parallel = True
        elif " error" in line.lower() and ("llama_model_load" in line or "failed" in line):
            log.errors.append(line.split(": ", 1)[-1])
    printed = log.buffers.get("compute", {})
    for buft, mib in exact_compute.items():  # the exit lines carry four decimals (of whichever context ends)
        if buft in printed and abs(printed[buft] - mib) < 0.006:
            printed[buft] = mib
    return log
