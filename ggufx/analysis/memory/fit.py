"""What llama.cpp's ``--fit`` decides for given free GPU memory (``common/fit.cpp``), from the header.

llama.cpp 11434 fits in four steps (``common_params_fit_impl``, common/fit.cpp:179-877), each measuring
memory with a dry run (a model and context loaded with ``no_alloc``: weights + KV/state + compute per
device, the ``self`` of the memory breakdown table). Here the dry run is :func:`buffers.breakdown`.
The free memory per GPU is what fit reads during its first dry run: :func:`free_seen` of the free
memory before llama.cpp starts (less the recurrent state that dry run allocates).

1. Measure the initial parameters; if every device keeps its margin (``-fitt``, 1024 MiB) free, nothing
   changes (``-c`` unset becomes the training context x streams).
2. Only when ``-c`` is unset: measure at ``-fitc`` (4096 per stream) and interpolate linearly between it
   and the training context towards the sum of free memory less the margins (for several GPUs less
   another ``(nd + 1) x weights per layer / 2`` (dense) or ``/ 6`` (MoE)); round down to 256 per stream.
   One GPU stops there; several GPUs go on with that context.
3. Fill devices back to front with layers (MoE: layers without their expert tensors), finding per
   device the most layers under ``free - margin`` by false position (regula falsi) on measured memory.
4. MoE only, when all dense weights fit: turn those dense-only layers into full layers front to back,
   then try one more layer whose up (then gate) or only attention part stays on the device.

The answer is ``-c``, ``-ngl``, ``-ts`` (layers per device) and ``-ot`` (the expert tensors of the
partial layers, on the host or the next device), printed as ``llama-fit-params`` prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ggufx.analysis.memory.buffers import Breakdown, ContextParams, breakdown, estimate_reason, refused_cache_types
from ggufx.analysis.memory.graph.graphsim import simulated
from ggufx.analysis.memory.hparams import Hparams, hparams, pad
from ggufx.analysis.memory.placement import CPU, Device, OffloadParams
from ggufx.errors import InputError
from ggufx.model import GGUFModel

MiB = 1 << 20
UINT32_MAX = (1 << 32) - 1
N_CTX_MIN = 4096  # common/common.h:483 fit_params_min_ctx (-fitc)
MARGIN = 1024 * MiB  # common/common.h:486 fit_params_target (-fitt)

# common/fit.cpp:18 common_layer_fraction_t: which part of a partial layer stays on its device
ATTN, UP, GATE, MOE = 1, 2, 3, 4
FRACTION_NAMES = {ATTN: "attn", UP: "up", GATE: "gate", MOE: "moe"}


@dataclass(frozen=True, slots=True)
class DeviceLayers:
    """``ngl_t`` (common/fit.cpp:532): the layers of one device, ``n_part`` of them partial (their
    expert tensors elsewhere; the first with ``overflow`` deciding which part leaves)."""

    n_layer: int = 0
    n_part: int = 0
    overflow: int = MOE

    @property
    def n_full(self) -> int:
        return self.n_layer - self.n_part

    def to_dict(self) -> dict[str, Any]:
        return {"n_layer": self.n_layer, "n_part": self.n_part, "overflow": FRACTION_NAMES[self.overflow]}


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """One device's measured memory (bytes), as llama.cpp's fit adds it up (``mb.total()``)."""

    model: int
    context: int
    compute: int

    @property
    def total(self) -> int:
        return self.model + self.context + self.compute


@dataclass(frozen=True, slots=True)
class DryRun:
    """The parameters of one of fit's dry runs (``common_get_device_memory_data``)."""

    n_ctx: int
    layers: tuple[DeviceLayers, ...] | None = None  # None: -ngl/-ts/-ot as given
    bufts: tuple[str, ...] = ()  # where the first partial layer of each device overflows to
    experts_on_host: bool = False  # -ot MOE_ALL=CPU (common/fit.cpp:617-627)


@dataclass(frozen=True, slots=True)
class Trial:
    """One dry run and its measured memory per device (llama.cpp's ``memory for test allocation``)."""

    run: DryRun
    use: tuple[DeviceUse, ...]

    def to_dict(self, names: list[str]) -> dict[str, Any]:
        r = self.run
        return {
            "n_ctx": r.n_ctx,
            "layers": None if r.layers is None else [x.to_dict() for x in r.layers],
            "overflow_to": list(r.bufts) if r.layers is not None else None,
            "experts_on_host": r.experts_on_host,
            "use": {n: u.total for n, u in zip(names, self.use, strict=True)},
        }


Measure = Callable[[DryRun], tuple[DeviceUse, ...]]


@dataclass(slots=True)
class LlamaFit:
    """llama.cpp's decision: the arguments ``llama-fit-params`` prints and what led to them."""

    status: str  # "unchanged", "context", "layers" or "failed" (llama.cpp: COMMON_PARAMS_FIT_STATUS_*)
    n_ctx: int
    n_gpu_layers: int  # -1: llama.cpp's default (everything)
    tensor_split: tuple[int, ...]  # layers per device (several GPUs, when fit set it)
    overrides: tuple[tuple[str, str], ...]  # -ot pattern=buffer type, in order
    devices: list[Device]
    margins: list[int]
    use: dict[str, int]  # ggufx's bytes per device at the decision (model + context + compute)
    message: str = ""  # why fitting failed, as llama.cpp says it
    trials: list[Trial] = field(default_factory=list)
    layers: tuple[DeviceLayers, ...] | None = None  # the layer split fit set (None: -ngl as given)
    compute_note: str | None = None  # the measured compute buffers are the generic decoder estimate: why

    @property
    def args(self) -> str:
        """The arguments as ``llama-fit-params`` prints them (tools/fit-params/fit-params.cpp:45-69)."""
        out = f"-c {self.n_ctx} -ngl {self.n_gpu_layers}"
        ts = list(self.tensor_split)
        while len(ts) > 1 and ts[-1] == 0:
            ts.pop()
        if len(ts) > 1:
            out += " -ts " + ",".join(str(n) for n in ts)
        if self.overrides:
            out += ' -ot "' + ",".join(f"{p}={b}" for p, b in self.overrides) + '"'
        return out

    def to_dict(self) -> dict[str, Any]:
        names = [d.name for d in self.devices]
        return {
            "status": self.status,
            "args": None if self.status == "failed" else self.args,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "tensor_split": list(self.tensor_split),
            "overrides": [list(o) for o in self.overrides],
            "free": {d.name: d.free for d in self.devices},
            "margin": dict(zip(names, self.margins, strict=True)),
            "use": self.use,
            "message": self.message,
            "layers": None if self.layers is None else [x.to_dict() for x in self.layers],
            "trials": [t.to_dict(names) for t in self.trials],
            "compute_note": self.compute_note,
        }


class _FitFailed(Exception):
    """common_params_fit_exception: llama.cpp gives up and keeps the parameters as they are."""


def overflow_pattern(il: int, fraction: int) -> str:
    """The -ot regex for the part of layer ``il`` that leaves its device (common/fit.cpp:493-530)."""
    return {
        ATTN: rf"blk\.{il}\.ffn_(gate|up|gate_up|down).*",
        UP: rf"blk\.{il}\.ffn_(gate|gate_up|down).*",
        GATE: rf"blk\.{il}\.ffn_down.*",
        MOE: rf"blk\.{il}\.ffn_(up|down|gate_up|gate)_(ch|)exps",
    }[fraction]


MOE_ALL = r"blk\.\d+\.ffn_(up|down|gate_up|gate)_(ch|)exps"  # common/fit.cpp:618


def layer_args(
    layers: tuple[DeviceLayers, ...], overflow_bufts: tuple[str, ...], n_layer: int
) -> tuple[int, tuple[int, ...], tuple[tuple[str, str], ...]]:
    """``set_ngl_tensor_split_tbo`` (common/fit.cpp:548-586): -ngl, -ts and -ot of a layer split.

    The partial layers of a device are its last ``n_part`` layers, counted from ``n_layer + 1 - ngl``,
    so on the last device they include the output layer (index ``n_layer``, which has no experts)."""
    ngl = sum(x.n_layer for x in layers)
    ts = tuple(x.n_layer for x in layers) if len(layers) > 1 else ()
    il0 = n_layer + 1 - ngl
    ot: list[tuple[str, str]] = []
    for x, buft in zip(layers, overflow_bufts, strict=True):
        il0 += x.n_full
        for il in range(il0, il0 + x.n_part):
            first = il == il0
            ot.append((overflow_pattern(il, x.overflow if first else MOE), buft if first else CPU))
        il0 += x.n_part
    return ngl, ts, tuple(ot)


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _step(delta: int, target: int, lo: int, hi: int) -> int:
    """The false-position step of common/fit.cpp:693-695 (int64 arithmetic stored in a uint32). Equal
    memory at both ends (a device over its target with no layer at all) makes llama.cpp divide by zero;
    here fitting fails with that reason."""
    if hi == lo:
        raise _FitFailed(
            f"the dry runs measured {lo // MiB} MiB with and without the layers, above the target of "
            f"{target // MiB} MiB: llama.cpp's false-position step would divide by zero"
        )
    step = _trunc_div(delta * (target - lo), hi - lo) & UINT32_MAX
    return min(max(step, 1), delta - 1)


def hp_ngl(hp: Hparams, offload: OffloadParams) -> int:
    """Fit's ``hp_ngl`` (common/fit.cpp:140-143), the layers it splits (plus the output layer) and counts
    ``-ngl`` from: ``llama_model_n_layer`` (without the NextN/MTP layers), plus ``llama_model_n_layer_nextn``
    when the model loads them (``mparams.load_mtp``: ``--spec-type draft-mtp``, ``offload.mtp``)."""
    return hp.n_layer if offload.mtp else hp.n_layer_main


def breakdown_measure(model: GGUFModel, devices: list[Device], offload: OffloadParams, cp: ContextParams) -> Measure:
    """The dry run of ``common_get_device_memory_data`` computed by :func:`breakdown`."""
    import re

    n_layer = hp_ngl(hparams(model), offload)
    names = [t.name for t in model.tensors]
    matched: dict[str, bool] = {}
    measured: dict[DryRun, tuple[DeviceUse, ...]] = {}  # fit's searches come back to a dry run

    def matches(pattern: str) -> bool:
        if pattern not in matched:
            rx = re.compile(pattern)
            matched[pattern] = any(rx.search(n) for n in names)
        return matched[pattern]

    def measure(run: DryRun) -> tuple[DeviceUse, ...]:
        if run not in measured:
            measured[run] = dry_run(run)
        return measured[run]

    def dry_run(run: DryRun) -> tuple[DeviceUse, ...]:
        off = offload
        if run.experts_on_host:
            off = replace(offload, overrides=((MOE_ALL, CPU),))
        elif run.layers is not None:
            ngl, ts, ot = layer_args(run.layers, run.bufts, n_layer)
            # llama.cpp ignores a pattern that matches no tensor (the output layer's); ggufx refuses it
            off = replace(
                offload,
                n_gpu_layers=ngl,
                tensor_split=tuple(float(n) for n in ts) or offload.tensor_split,
                overrides=tuple(o for o in ot if matches(o[0])),
            )
        return device_use(breakdown(model, devices, off, replace(cp, n_ctx=run.n_ctx)), devices)

    return measure


def extra_left_out(draft: GGUFModel, tool: str | None) -> str | None:
    """Why llama.cpp's fit leaves a draft model (``-md``) out of its dry runs (None: it fits it beside the target,
    :func:`with_extra`). ``common_init_result`` hands ``common_fit_params`` the draft as an extra model
    (common/common.cpp:1239-1266), but ``llama-fit-params`` passes none (tools/fit-params/fit-params.cpp:33-36),
    and a head that reads the target's context cannot be measured alone: its context refuses to exist without
    ``ctx_other`` (llama-context.cpp:148-165: Gemma 4's assistant always, an EAGLE3 / DFlash head without its own
    ``token_embd`` or ``output``), and fit goes on without it (common/fit.cpp:225-231)."""
    if tool == "llama-fit-params":
        return "llama-fit-params fits the target alone (it gives common_fit_params no extra model)"
    arch = draft.architecture or ""
    names = {t.name for t in draft.tensors}
    if arch == "gemma4-assistant" or (
        arch in ("eagle3", "dflash") and not {"token_embd.weight", "output.weight"} <= names
    ):
        return (
            f"{arch} requires ctx_other to be set: llama.cpp's fit cannot measure the draft alone and fits the target "
            'without it ("failed to measure the memory of the extra model, fitting without it")'
        )
    return None


def with_extra(measure: Measure, extra: Callable[[int], tuple[DeviceUse, ...]]) -> Measure:
    """The dry runs of a fit with an extra model (``common_fit_extra_model``, common/fit.cpp:200-262; a draft
    model, ``-md``): each one's memory plus, on the same devices, the extra model's weights, context and compute
    buffers, that one measured with its own parameters at the main context's size (``extra(n_ctx)``) and again
    whenever that size changes. The extra's parameters are never changed by the fit."""
    cache: dict[int, tuple[DeviceUse, ...]] = {}

    def measured(run: DryRun) -> tuple[DeviceUse, ...]:
        more = cache.get(run.n_ctx)
        if more is None:
            more = cache[run.n_ctx] = extra(run.n_ctx)
        return tuple(
            DeviceUse(u.model + m.model, u.context + m.context, u.compute + m.compute)
            for u, m in zip(measure(run), more, strict=True)
        )

    return measured


PAGE = 2 * MiB  # CUDA hands out device memory in 2 MiB pages


def free_seen(
    model: GGUFModel, devices: list[Device], offload: OffloadParams | None = None, cp: ContextParams | None = None
) -> list[Device]:
    """``devices`` (free memory before llama.cpp starts) with the free memory llama.cpp's fit then sees.

    Fit reads each GPU's free memory while its first dry run's context is alive (common/fit.cpp:103-110,
    ``dmds_full[id].free``, which sets the targets, fit.cpp:647-652). That dry run gives the weights and
    the KV cache size-0 dummy buffers (llama-model.cpp:1879-1883, llama-kv-cache.cpp:279-283) but
    allocates and clears the recurrent state for real (llama-memory-recurrent.cpp:118-123), in whole
    pages; a GPU the dry run does work on (its recurrent state, or any GPU of several) keeps one more
    page. Measured on every recorded fit-on run: qwen36-27b 80552 -> 80400 MiB on an H100 and
    142629 -> 142477 on an H200 (149.62 MiB of state), on two H200s 142629 -> 142549 and 142555
    (77.93 and 71.70 MiB), models without state 142629 -> 142627 on two H200s, unchanged on one GPU.
    In bytes (cuMemGetInfo on an H100, driver 580.159.04): 80552.1875 MiB free, a 1-byte allocation
    takes a 2 MiB page and 55.38 MiB of state 56 MiB. Give the free memory in bytes: fit compares
    with its targets to the byte (granite-4.0-h-tiny at -fitt 77900 keeps blk.6's up on the GPU by
    0.06 MiB, which free memory floored to MiB loses)."""
    offload = offload or OffloadParams()
    cp = cp or ContextParams()
    b = breakdown(model, devices, offload, cp)
    rs = b.by_kind("recurrent")
    # DeepSeek V4's compressor states are allocated in the dry run too (llama_dsv4_comp_state has no no_alloc
    # branch, llama-kv-cache-dsv4.cpp); not yet measured on a GPU: counted with the recurrent state's pages
    for name, n in b.by_kind("state").items():
        rs[name] = rs.get(name, 0) + n
    out = []
    for d in devices:
        state = -(-rs.get(d.name, 0) // PAGE) * PAGE
        used = state + (PAGE if state or len(devices) > 1 else 0)
        out.append(replace(d, free=d.free - used))
    return out


def device_use(b: Breakdown, devices: list[Device]) -> tuple[DeviceUse, ...]:
    table = b.table()
    empty = {"model": 0, "context": 0, "compute": 0}
    return tuple(DeviceUse(**{k: table.get(d.name, empty)[k] for k in empty}) for d in devices)


def llama_fit(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams | None = None,
    cp: ContextParams | None = None,
    *,
    margins: list[int] | int = MARGIN,
    n_ctx_min: int | None = N_CTX_MIN,
    measure: Measure | None = None,
) -> LlamaFit:
    """What llama.cpp's fit (``-fit on``, ``llama-fit-params``) sets for ``devices`` (their ``free``
    bytes), keeping ``margins`` bytes free on each (``-fitt``, one value or one per device).

    ``cp.n_ctx == 0`` is ``-c`` not given (the context may be reduced down to ``n_ctx_min``, ``-fitc``);
    ``n_ctx_min=None`` is ``-c 0`` (the full training context requested, never reduced). ``measure``
    replaces the dry run (tests feed llama.cpp's own measurements)."""
    if not devices:
        raise InputError("fitting needs at least one GPU", "--fit")
    offload = offload or OffloadParams()
    cp = cp or ContextParams()
    if offload.split_mode == "tensor":
        raise InputError("llama.cpp's fit is not implemented for -sm tensor", "-sm")
    if offload.split_mode == "none":  # src/llama.cpp:288-301: the model has the main GPU only
        if not 0 <= offload.main_gpu < len(devices):
            raise InputError(f"-mg {offload.main_gpu}: there are {len(devices)} GPU(s)", "-mg")
        devices, offload = [devices[offload.main_gpu]], replace(offload, main_gpu=0)
    # common/arg.cpp:2902-2920: one -fitt value is every device's, several leave the rest at 1024 MiB
    margin_list = [margins] if isinstance(margins, int) else list(margins) or [MARGIN]
    margin_list = margin_list * len(devices) if len(margin_list) == 1 else margin_list
    margin_list += [MARGIN] * (len(devices) - len(margin_list))
    run = _Fit(model, devices, offload, cp, margin_list[: len(devices)], n_ctx_min, measure)
    try:
        run.fit()
    except _FitFailed as e:
        run.status, run.message = "failed", str(e)
    out = run.result()
    why_not = simulated(model)
    if why_not is not None:  # every dry run's compute buffers are the phase model's
        out.compute_note = estimate_reason(model, why_not)
    return out


class _Fit:
    """One run of ``common_params_fit_impl``; the attributes are the parameters it modifies."""

    def __init__(
        self,
        model: GGUFModel,
        devices: list[Device],
        offload: OffloadParams,
        cp: ContextParams,
        margins: list[int],
        n_ctx_min: int | None,
        measure: Measure | None,
    ) -> None:
        hp = hparams(model)
        self.devices, self.offload, self.margins = devices, offload, margins
        self.nd = len(devices)
        self.free = [d.free for d in devices]
        self.targets = [f - m for f, m in zip(self.free, margins, strict=True)]  # common/fit.cpp:647-652
        self.hp_ngl = hp_ngl(hp, offload)
        self.hp_nct = hp.n_ctx_train or 4096
        self.hp_nex = model.metadata.get_int(f"{model.architecture}.expert_count") or 0
        self.n_streams = 1 if cp.kv_unified else max(1, cp.n_parallel)  # common/fit.cpp:197
        self.n_ctx_auto = cp.n_ctx == 0
        # llama_context: n_ctx 0 is the training context in total (the dry runs pad any other to 256)
        self.n_ctx = cp.n_ctx or self.hp_nct
        self.n_ctx_min = UINT32_MAX if n_ctx_min is None else n_ctx_min
        self.own = breakdown_measure(model, devices, offload, cp)
        self.measure_fn = measure or self.own
        self.trials: list[Trial] = []
        self.status = "unchanged"
        self.message = ""
        self.layers: tuple[DeviceLayers, ...] | None = None
        self.bufts: tuple[str, ...] = (CPU,) * self.nd  # common/fit.cpp:654-658
        self.mem: list[int] = []  # the measured use of self.layers

    def measure(self, run: DryRun) -> list[int]:
        use = self.measure_fn(run)
        self.trials.append(Trial(run, use))
        return [u.total for u in use]

    def measure_layers(self, layers: list[DeviceLayers], bufts: tuple[str, ...] | None = None) -> list[int]:
        """``get_memory_for_layers`` (common/fit.cpp:589-614)."""
        return self.measure(DryRun(self.n_ctx, tuple(layers), bufts or self.bufts))

    def result(self) -> LlamaFit:
        ngl = self.offload.n_gpu_layers
        ts: tuple[int, ...] = ()
        ot: tuple[tuple[str, str], ...] = ()
        if self.layers is not None:
            ngl, ts, ot = layer_args(self.layers, self.bufts, self.hp_ngl)
        final = DryRun(self.n_ctx, self.layers, self.bufts if self.layers is not None else ())
        use = next((t.use for t in reversed(self.trials) if t.run == final and self.measure_fn is self.own), None)
        if use is None:  # ggufx's own figures, whoever measured the trials
            use = self.own(final)
        return LlamaFit(
            self.status,
            self.n_ctx,
            ngl,
            ts,
            ot,
            self.devices,
            self.margins,
            {d.name: u.total for d, u in zip(self.devices, use, strict=True)},
            self.message,
            self.trials,
            self.layers,
        )

    def fit(self) -> None:
        # step 1 (common/fit.cpp:261-371): the parameters as given
        full = self.measure(DryRun(self.n_ctx))
        n_ctx_max = min(self.hp_nct * self.n_streams, UINT32_MAX)
        n_ctx_min_total = min(self.n_ctx_min * self.n_streams, UINT32_MAX)
        if self.n_ctx_auto:
            self.n_ctx = n_ctx_max
            if self.n_streams > 1:
                full = self.measure(DryRun(self.n_ctx))
        if all(f - u >= m for f, u, m in zip(self.free, full, self.margins, strict=True)):
            return
        # step 2 (common/fit.cpp:373-458): a smaller context, only when -c is not given
        surplus = sum(self.free) - sum(full) - sum(self.margins)
        if surplus < 0 and self.n_ctx_auto and n_ctx_max > n_ctx_min_total:
            if self.reduce_context(full, n_ctx_max, n_ctx_min_total):
                return
        # common/fit.cpp:463-486: only parameters left at their defaults are changed
        if self.offload.n_gpu_layers != -1:
            raise _FitFailed(f"n_gpu_layers already set by user to {self.offload.n_gpu_layers}, abort")
        if self.nd > 1 and any(self.offload.tensor_split):
            raise _FitFailed("model_params::tensor_split already set by user, abort")
        if self.offload.overrides:
            raise _FitFailed("model_params::tensor_buft_overrides already set by user, abort")
        self.status = "layers"
        surplus_cpu_moe = 0
        if self.hp_nex > 0:  # common/fit.cpp:616-645: every expert tensor on the host
            use = self.measure(DryRun(self.n_ctx, experts_on_host=True))
            surplus_cpu_moe = sum(t - u for t, u in zip(self.targets, use, strict=True))
        self.fill_back_to_front()
        if self.hp_nex > 0 and surplus_cpu_moe > 0:
            self.fill_front_to_back()

    def reduce_context(self, full: list[int], n_ctx_max: int, n_ctx_min_total: int) -> bool:
        """common/fit.cpp:393-445; True when that alone fits (one device: the answer)."""
        used_target = sum(self.free) - sum(self.margins)
        if self.nd > 1:
            # whole layers (dense) or whole tensors (MoE, <= 1/3 layer) per device waste ~0.5 each
            model_bytes = sum(u.model for u in self.trials[-1].use)
            # (llama.cpp divides by zero at -ngl 0; one layer stands in for it here)
            per_layer = model_bytes // max(min(self.offload.n_gpu_layers & UINT32_MAX, self.hp_ngl), 1)
            used_target -= (self.nd + 1) * per_layer // (2 if self.hp_nex == 0 else 6)
        self.n_ctx = n_ctx_min_total
        at_min = sum(self.measure(DryRun(self.n_ctx)))
        self.status = "context"
        if used_target <= at_min:
            return False
        # linear interpolation, rounded down to 256 per stream (common/fit.cpp:425-430)
        n = self.n_ctx + (n_ctx_max - n_ctx_min_total) * (used_target - at_min) // (sum(full) - at_min)
        align = 256 * self.n_streams
        self.n_ctx = max(n - n % align, n_ctx_min_total)
        return self.nd <= 1

    def fill_back_to_front(self) -> None:
        """Step 3 (common/fit.cpp:660-735): per device, last first, the most (dense-only) layers
        under its target, by false position between a fitting and a failing layer count."""
        nd, moe, targets = self.nd, self.hp_nex > 0, self.targets
        ngl = [DeviceLayers() for _ in range(nd)]
        mem = self.measure_layers(ngl)
        for id_ in range(nd - 1, -1, -1):
            n_unassigned = self.hp_ngl + 1 - sum(ngl[j].n_layer for j in range(id_ + 1, nd))
            if n_unassigned == 0:
                continue
            high = list(ngl)
            # MoE: every layer dense-only, except the output layer on the last device
            high[id_] = DeviceLayers(n_unassigned, (n_unassigned if id_ < nd - 1 else n_unassigned - 1) if moe else 0)
            mem_high = self.measure_layers(high)
            if mem_high[id_] <= targets[id_]:
                ngl, mem = high, mem_high
                continue
            delta = high[id_].n_layer - ngl[id_].n_layer
            while delta > 1:
                step = _step(delta, targets[id_], mem[id_], mem_high[id_])
                test = list(ngl)
                x = test[id_]
                part = (step - 1 if id_ == nd - 1 and x.n_part == 0 else step) if moe else 0
                test[id_] = DeviceLayers(x.n_layer + step, x.n_part + part, x.overflow)
                mem_test = self.measure_layers(test)
                if mem_test[id_] <= targets[id_]:
                    ngl, mem = test, mem_test
                else:
                    high, mem_high = test, mem_test
                delta = high[id_].n_layer - ngl[id_].n_layer
        self.layers, self.mem = tuple(ngl), mem

    def fill_front_to_back(self) -> None:
        """Step 4 (common/fit.cpp:737-874): dense-only layers become full ones, front to back."""
        nd, targets = self.nd, self.targets
        assert self.layers is not None
        ngl, mem = list(self.layers), self.mem
        id_dense_start = nd
        for id_ in range(nd - 1, -1, -1):
            if ngl[id_].n_layer == 0:
                break
            id_dense_start = id_
        id_ = 0
        while id_ <= id_dense_start < nd:
            high = list(ngl)
            for jd in range(id_dense_start, nd):
                move = high[jd].n_layer if jd < nd - 1 else high[jd].n_layer - 1
                high[id_] = replace(high[id_], n_layer=high[id_].n_layer + move)
                high[jd] = DeviceLayers(high[jd].n_layer - move, 0, high[jd].overflow)
            start_high = nd - 1
            mem_high = self.measure_layers(high)
            if mem_high[id_] > targets[id_]:
                delta = high[id_].n_full - ngl[id_].n_full
                while delta > 1:
                    step = _step(delta, targets[id_], mem[id_], mem_high[id_])
                    test, start_test = _convert(ngl, id_, id_dense_start, step)
                    mem_test = self.measure_layers(test)
                    if mem_test[id_] <= targets[id_]:
                        ngl, mem, id_dense_start = test, mem_test, start_test
                    else:
                        high, mem_high, start_high = test, mem_test, start_test
                    delta = high[id_].n_full - ngl[id_].n_full
            else:
                ngl, mem, id_dense_start = high, mem_high, start_high
            ngl, mem, id_dense_start = self.one_more_layer(ngl, mem, id_, id_dense_start)
            id_ += 1
        self.layers, self.mem = tuple(ngl), mem

    def one_more_layer(
        self, ngl: list[DeviceLayers], mem: list[int], id_: int, id_dense_start: int
    ) -> tuple[list[DeviceLayers], list[int], int]:
        """common/fit.cpp:806-860: part of one more layer on device ``id_`` (attention + up, then
        + gate, else attention only), the rest of it on the next device (the host after the last)."""
        nd, targets = self.nd, self.targets
        if ngl[id_dense_start].n_layer <= (0 if id_ < nd - 1 else 1):
            return ngl, mem, id_dense_start
        test = list(ngl)
        start_test = id_dense_start
        d = test[start_test]
        test[start_test] = DeviceLayers(d.n_layer - 1, d.n_part - 1, d.overflow)
        x = test[id_]
        test[id_] = DeviceLayers(x.n_layer + 1, x.n_part + 1, UP)
        if test[start_test].n_part == 0:
            start_test += 1
        bufts = list(self.bufts)
        if id_ < nd - 1:
            bufts[id_] = self.devices[id_ + 1].name

        def fits(m: list[int]) -> bool:
            return m[id_] < targets[id_] and (id_ + 1 == nd or m[id_ + 1] < targets[id_ + 1])

        mem_test = self.measure_layers(test, tuple(bufts))
        if fits(mem_test):
            ngl, mem, id_dense_start, self.bufts = list(test), mem_test, start_test, tuple(bufts)
            test[id_] = replace(test[id_], overflow=GATE)
        else:
            test[id_] = replace(test[id_], overflow=ATTN)
        mem_test = self.measure_layers(test, tuple(bufts))
        if fits(mem_test):
            ngl, mem, id_dense_start, self.bufts = list(test), mem_test, start_test, tuple(bufts)
        return ngl, mem, id_dense_start


def _convert(ngl: list[DeviceLayers], id_: int, id_dense_start: int, step: int) -> tuple[list[DeviceLayers], int]:
    """common/fit.cpp:770-783: ``step`` dense-only layers, from ``id_dense_start`` on, become full
    layers of device ``id_``."""
    test = list(ngl)
    start = id_dense_start
    converted = 0
    while start < len(test):
        t = test[start]
        n = min(step - converted, t.n_part)
        test[start] = DeviceLayers(t.n_layer - n, t.n_part - n, t.overflow)
        test[id_] = replace(test[id_], n_layer=test[id_].n_layer + n)
        converted += n
        if test[start].n_part > 0:
            break
        start += 1
    return test, start


# ggufx's own searches: the largest context, or the most whole layers, that fit


@dataclass(frozen=True, slots=True)
class Fit:
    cache_type: str
    n_ctx: int  # 0 when even 256 tokens do not fit
    gpu_total: int
    capped: bool  # reached the training context

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_type": self.cache_type,
            "n_ctx": self.n_ctx,
            "gpu_bytes": self.gpu_total,
            "capped_at_training_context": self.capped,
        }


def fit(
    model: GGUFModel,
    budget: int,
    cache_types: tuple[str, ...] = ("f16", "q8_0", "q4_0"),
    *,
    max_ctx: int = 0,
    parallel: int = 1,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    n_gpu_layers: int = -1,
) -> list[Fit]:
    """The largest context (a multiple of 256) whose GPU total fits ``budget`` bytes, per cache type
    (one GPU, nothing kept free: :func:`fit_devices` is the general form)."""
    cp = ContextParams(
        n_ctx=max_ctx, n_ubatch=n_ubatch, n_parallel=max(1, parallel), flash_attn="auto" if flash_attn else "off"
    )
    fits = fit_devices(
        model,
        [Device("CUDA0", budget)],
        OffloadParams(n_gpu_layers=n_gpu_layers),
        cp,
        margin=0,
        cache_types=cache_types,
    )
    return [Fit(f.cache_type, f.value, f.use["CUDA0"], f.capped) for f in fits]


@dataclass(slots=True)
class DeviceFit:
    """What fits a set of GPUs: the setting found and each GPU's use at it (bytes)."""

    what: str  # "context" or "layers"
    cache_type: str
    value: int  # tokens, or layers for -ngl; 0 when nothing fits
    n_layer: int
    use: dict[str, int]  # GPU -> bytes llama.cpp's fit counts there (model + context + compute)
    capped: bool  # reached the training context / every layer

    def to_dict(self) -> dict[str, Any]:
        key = "n_ctx" if self.what == "context" else "n_gpu_layers"
        return {
            "fit": self.what,
            "cache_type": self.cache_type,
            key: self.value,
            "n_layer": self.n_layer,
            "use": self.use,
            "capped": self.capped,
        }


def _fits(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, cp: ContextParams, margin: int
) -> tuple[bool, dict[str, int]]:
    b = breakdown(model, devices, offload, cp)
    table = b.table()
    use = {d.name: table.get(d.name, {}).get("self", 0) for d in devices}
    return all(use[d.name] <= d.free - margin for d in devices), use


def fit_devices(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    cp: ContextParams,
    *,
    target: str = "context",
    margin: int = 1 << 30,
    cache_types: tuple[str, ...] = (),
) -> list[DeviceFit]:
    """ggufx's own search (not llama.cpp's, which is :func:`llama_fit`): what fits every GPU with
    ``margin`` bytes left free; it counts weights, KV, state and compute, not the output buffer.

    ``target="context"``: the largest context (a multiple of 256 per stream, at most the training
    context) per cache type, everything offloaded as ``offload`` says. ``target="layers"``: the
    largest ``-ngl`` at ``cp.n_ctx``."""
    if not devices:
        raise InputError("fitting needs at least one GPU", "--fit")
    hp = hparams(model)
    types = cache_types or ((cp.cache_type_k,) if target == "layers" else ("f16", "q8_0", "q4_0"))
    if len(types) > 1:  # a search over cache types leaves out those llama.cpp makes no context with
        refused = refused_cache_types(model, cp, types)
        types = tuple(t for t in types if t not in refused)
    out = []
    for ct in types:
        ctx_params = replace(cp, cache_type_k=ct, cache_type_v=ct)
        if target == "layers":
            lo, hi = -1, hp.n_layer + 1  # largest ngl that fits (-1: none does)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _fits(model, devices, replace(offload, n_gpu_layers=mid), ctx_params, margin)[0]:
                    lo = mid
                else:
                    hi = mid - 1
            ngl = max(lo, 0)
            use = _fits(model, devices, replace(offload, n_gpu_layers=ngl), ctx_params, margin)[1]
            out.append(DeviceFit("layers", ct, ngl if lo >= 0 else 0, hp.n_layer, use, lo == hp.n_layer + 1))
            continue
        step = 256 * (1 if cp.kv_unified else cp.n_parallel)
        top = pad(cp.n_ctx or hp.n_ctx_train or 131072, step)
        seen: dict[int, dict[str, int]] = {}

        def slack(k: int, ctx_params: ContextParams = ctx_params) -> int:
            """The least memory left on a GPU at ``k`` steps of context (negative: it does not fit)."""
            use = seen[k] = _fits(model, devices, offload, replace(ctx_params, n_ctx=k * step), margin)[1]
            return min(d.free - margin - use[d.name] for d in devices)

        n = _largest(slack, top // step) * step
        use = seen.get(n // step) or _fits(model, devices, offload, replace(ctx_params, n_ctx=n or step), margin)[1]
        out.append(DeviceFit("context", ct, n, hp.n_layer, use, n == top))
    return out


def _largest(slack: Callable[[int], int], top: int) -> int:
    """The largest ``k`` in ``1..top`` with ``slack(k) >= 0`` (0: none), for a ``slack`` that falls as
    ``k`` grows, as a bisection finds it, in fewer calls: memory grows almost linearly with the
    context, so after the top and the bottom (where nothing fits, the answer at once) each guess is
    interpolated from the two ends of the bracket (and its neighbour tried, which closes the bracket
    when the guess is right); a guess that does not halve the bracket is followed by a bisection
    step, so it never takes more than about twice a bisection's calls."""
    s_hi = slack(top)
    if s_hi >= 0:
        return top
    if top == 1:
        return 0
    s_lo: int | None = slack(1)
    assert s_lo is not None
    if s_lo < 0:  # not even the smallest context fits
        return 0
    lo, hi = 1, top  # slack(lo) >= 0, slack(hi) < 0
    bisect = False
    while hi - lo > 1:
        guess = not bisect and s_lo is not None
        if guess:
            assert s_lo is not None
            k = min(max(lo + (hi - lo) * s_lo // (s_lo - s_hi), lo + 1), hi - 1)
        else:
            k = (lo + hi) // 2
        width = hi - lo
        s = slack(k)
        if s >= 0:
            lo, s_lo = k, s
            if k + 1 < hi and guess:
                s = slack(k + 1)
                if s < 0:
                    return k
                lo, s_lo = k + 1, s
        else:
            hi, s_hi = k, s
            if k - 1 > lo and guess:
                s = slack(k - 1)
                if s >= 0:
                    return k - 1
                hi, s_hi = k - 1, s
        bisect = guess and (hi - lo) * 2 > width
    return lo
