"""Text renderings of the read-only commands' results.

Each function takes the object a :mod:`ggufx.results` function built (the same object ``--json``
prints) and returns the table text, so a command has one data path: result -> JSON or text.
Pure: typed results in (the ``TypedDict`` of each command, :mod:`ggufx.results`), strings out (no
click, no I/O)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from ggufx.render import table
from ggufx.render.table import printable

if TYPE_CHECKING:  # the result types are imported for mypy only: rendering a result needs no results module
    from ggufx.results import (
        CheckResult,
        DiffResult,
        FitResult,
        HashResult,
        ImatrixResult,
        InfoResult,
        KeyRecord,
        KeyResult,
        LayersResult,
        MemoryCheckResult,
        MemoryResult,
        MetaResult,
        PromotionResult,
        RecipeResult,
        RolesResult,
        ScanResult,
        TemplateInfoResult,
        TemplateLintResult,
        TensorsResult,
        VerifyResult,
    )

STR_WIDTH = 72  # string characters shown in tables without --full


def _printable(render: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(render)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        return printable(render(*args, **kwargs))

    return wrapper


def human_bytes(n: int) -> str:
    """Binary units as llama.cpp prints them (MiB, GiB)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def human_params(n: int) -> str:
    """Parameter count as llama.cpp prints it (134.52 M, 26.90 B)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def info_text(s: InfoResult, fmt: str = "simple") -> str:
    """``ggufx info``: facts, then the type histogram (``results.info``)."""
    ft = s["file_type_label"] or "-"
    if s["file_type_guessed"]:
        ft += " (guessed from tensor types)"
    ct = s["chat_template"]
    tmpl = "none"
    if ct["present"]:
        tmpl = f"{ct['length']:,} chars, starts: {_clip(ct['first_line'] or '', 60)}"
    if ct["named"]:
        tmpl += f" (+ named: {', '.join(ct['named'])})"
    shards = len(s["shards"])
    facts = [
        ("file", s["path"]),
        ("architecture", s["architecture"] or "-"),
        ("name", s["name"] or "-"),
        ("file type", ft),
        (
            "file size",
            f"{human_bytes(s['file_bytes'])} ({s['file_bytes']:,} bytes)"
            + (f" in {shards} shards" if shards > 1 else ""),
        ),
        ("GGUF", f"v{s['gguf_version']}, {s['endianness']}-endian, alignment {s['alignment']}, {s['kv_count']} keys"),
        ("tensors", f"{s['tensor_count']:,}"),
        ("parameters", f"{human_params(s['parameters'])} ({s['parameters']:,})"),
        ("BPW", f"{s['bpw']:.4f}  (all tensors: 8 x {s['tensor_bytes']:,} bytes / parameters, as llama.cpp prints)"),
        (
            "BPW weights",
            f"{s['bpw_weights']:.4f}  (only the {human_params(s['weight_parameters'])} weights "
            "llama-quantize quantizes)",
        ),
        ("context length", _opt(s["context_length"])),
        ("block count", _opt(s["block_count"])),
        ("embedding length", _opt(s["embedding_length"])),
        ("vocabulary", _opt(s["vocab_size"])),
        ("chat template", tmpl),
    ]
    if s.get("kind", "model") != "model":
        facts.insert(1, ("kind", s["kind"]))
        facts.extend(_companion_facts(s["kind"], s.get("companion") or {}))
    if s["unknown_types"]:
        facts.append(("unknown types", ", ".join(s["unknown_types"]) + " (size derived from offsets; upgrade gguf)"))
    width = max(len(k) for k, _ in facts)
    head = "\n".join(f"{k.ljust(width)}  {v}" for k, v in facts)
    rows = [
        (name, t["count"], t["parameters"], t["bytes"], f"{100 * t['share']:.2f}%", f"{t['bpw']:.2f}")
        for name, t in s["types"].items()
    ]
    hist = table.render(rows, ("type", "tensors", "parameters", "bytes", "share", "BPW"), fmt, align="lrrrrr")
    text = f"{head}\n\n{hist}"
    server = s.get("server")
    if server is not None:
        same = {True: "the file's", False: "NOT the file's", None: "not reported"}[server["template_matches_file"]]
        text += f"\n\nserver: {server['url']} (n_ctx {server['n_ctx']}, chat template {same})"
    return text


def _companion_facts(kind: str, c: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The lines ``info`` adds for a projector, adapter, imatrix, control vector or vocabulary."""

    def opt(v: Any) -> str:
        return "-" if v is None else str(v)

    if kind == "projector":
        mods = [m for m in ("vision", "audio") if c.get(f"has_{m}_encoder")]
        out = [("projector", f"{opt(c.get('projector_type'))} ({', '.join(mods) or 'no encoder flag'})")]
        for m in mods:
            t = c.get(m) or {}
            parts = [f"{t.get('block_count') or '-'} blocks", f"width {opt(t.get('embedding_length'))}"]
            if m == "vision":
                parts += [f"image {opt(t.get('image_size'))}", f"patch {opt(t.get('patch_size'))}"]
            parts.append(f"projects to {opt(t.get('projection_dim'))}")
            out.append((f"{m} tower", ", ".join(parts)))
        mem = c.get("memory") or {}
        if mem:
            line = f"weights {mem['weights_bytes'] / MiB:,.2f} MiB"
            if mem.get("gpu_compute_bytes") is not None:
                line += (
                    f"; compute {mem['gpu_compute_bytes'] / MiB:,.2f} MiB on the GPU"
                    f" + {mem['host_compute_bytes'] / MiB:,.2f} MiB host, {mem['cpu_compute_bytes'] / MiB:,.2f} MiB"
                    " without GPU"
                )
            else:
                line += f"; compute not modelled ({mem.get('compute_not_modelled')})"
            out.append(("projector memory", line))
        return out
    if kind == "adapter":
        rank = c.get("rank")
        ranks = "/".join(map(str, c.get("ranks") or [])) or "-"
        layers = c.get("layers") or []
        span = f"layers {layers[0]}-{layers[-1]} ({len(layers)})" if layers else "no layer tensors"
        return [
            ("adapter", f"{opt(c.get('adapter_type'))}, alpha {opt(c.get('alpha'))}, rank {rank if rank else ranks}"),
            ("adapted tensors", f"{c.get('tensors', 0)} in {span}"),
        ]
    if kind == "imatrix":
        ds = c.get("datasets") or []
        return [
            (
                "imatrix",
                f"{c.get('tensors', 0)} tensors, {opt(c.get('chunk_count'))} chunks of {opt(c.get('chunk_size'))}",
            ),
            ("datasets", ", ".join(ds) or "-"),
        ]
    if kind == "control-vector":
        return [("control vector", f"{len(c.get('layers') or [])} layers, model hint {opt(c.get('model_hint'))}")]
    if kind == "vocab":
        return [("vocabulary only", f"{opt(c.get('tokenizer_model'))} ({opt(c.get('tokens'))} tokens)")]
    return []


def _opt(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _clip(text: str, width: int) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text if len(text) <= width else text[: width - 1] + "…"


def tensors_text(res: TensorsResult, fmt: str = "simple", show_shard: bool = False) -> str:
    """``ggufx tensors`` (``results.tensors``); ``show_shard`` for split models."""
    headers = ["name", "type", "shape", "elements", "bytes", "BPW"]
    if show_shard:
        headers.append("shard")
    headers.append("offset")
    rows = []
    for t in res["tensors"]:
        row: list[Any] = [
            t["name"],
            t["type"],
            " x ".join(map(str, t["shape"])),
            t["elements"],
            t["bytes"],
            f"{t['bpw']:.2f}",
        ]
        if show_shard:
            row.append(t["shard"] + 1)
        row.append(t["file_offset"])
        rows.append(row)
    return table.render(rows, headers, fmt, align="lllrrr" + ("r" if show_shard else "") + "r")


# -- metadata ----------------------------------------------------------------------------------


def type_label(record: KeyRecord) -> str:
    """``u32``, ``str``, ``arr[str,262144]``, ``arr[arr[i32,2],3]`` (a ``results.meta`` record)."""
    return record.get("type_label", record["type"])


def value_text(record: KeyRecord, full: bool) -> str:
    """One metadata value as a table cell (``full``: whole strings and arrays)."""
    vtype, value = record["type"], record["value"]
    if vtype == "str":
        return value if full else _clip(value, STR_WIDTH)
    if vtype == "arr":
        import json

        text = json.dumps(value, ensure_ascii=False)
        shown = len(value)
        if not full and record["length"] > shown:
            text = text[:-1] + f", … {record['length'] - shown:,} more]"
        return text if full else _clip(text, STR_WIDTH * 2)
    if vtype == "f32":
        return repr(value)
    return str(value).lower() if vtype == "bool" else str(value)


def raw_text(text: str) -> bytes:
    """A string value byte for byte as the file holds it (invalid UTF-8 kept as it was)."""
    from ggufx.format.values import encode_str

    return encode_str(text)


def key_bytes(res: KeyResult) -> bytes:
    """``meta FILE KEY``: a string byte for byte with nothing added, an array as JSON, else the value."""
    if res["type"] == "str":
        return raw_text(res["value"])
    if res["type"] == "arr":
        from ggufx.render.jsontext import dumps

        return (dumps(res["value"]) + "\n").encode("utf-8", "surrogateescape")
    return (value_text(res, True) + "\n").encode("utf-8", "surrogateescape")


def meta_text(res: MetaResult, full: bool, fmt: str = "simple") -> str:
    """``ggufx meta`` (``results.meta``)."""
    rows = [(key, type_label(rec), value_text(rec, full)) for key, rec in res["metadata"].items()]
    return table.render(rows, ("key", "type", "value"), fmt, align="lll")


# -- quant analysis ------------------------------------------------------------------------------


def roles_text(res: RolesResult, fmt: str = "simple") -> str:
    """``ggufx roles`` (``results.roles``)."""
    rows = [
        (
            r["role"],
            r["tensors"],
            ", ".join(f"{t} {n}" for t, n in r["types"].items()),
            r["parameters"],
            r["bytes"],
            f"{100 * r['share']:.2f}%",
            f"{r['bpw']:.2f}",
        )
        for r in res["roles"]
    ]
    return table.render(rows, ("role", "tensors", "types", "parameters", "bytes", "share", "BPW"), fmt, align="lrlrrrr")


def layers_text(res: LayersResult, fmt: str = "simple") -> str:
    """``ggufx layers`` (``results.layers``): the grid, then the count of layers per kind."""
    roles = res["roles"]
    rows = []
    for r in res["layers"]:
        span = str(r["first"]) if r["first"] == r["last"] else f"{r['first']}-{r['last']}"
        rows.append([span, r["kind"], *[r["types"][role] or "-" for role in roles], f"{r['bpw']:.2f}"])
    grid = table.render(rows, ["layers", "kind", *roles, "BPW"], fmt, align="ll" + "l" * len(roles) + "r")
    counts = ", ".join(f"{n} {kind}" for kind, n in res["layer_kinds"].items())
    n = sum(res["layer_kinds"].values())
    of = "" if res.get("kind", "model") == "model" else f" in this {res['kind']} file"
    return f"{grid}\n\n{n} layers{of}: {counts}"


def recipe_output(res: RecipeResult | PromotionResult, fmt: str, tablefmt: str) -> str:
    """``ggufx recipe``: with promotions and ``--format command`` the table of promotions, else the
    recipe in ``fmt``."""
    if "promotions" in res and fmt == "command":
        return promotion_text(cast("PromotionResult", res), tablefmt)
    return recipe_text(res, fmt)


def recipe_text(res: RecipeResult, fmt: str = "command") -> str:
    """``ggufx recipe`` (``results.recipe``) as a command line, a --tensor-type-file or arguments."""
    if fmt == "tensor-type-file":
        return res["tensor_type_file"]
    if fmt == "args":
        return "\n".join(res["args"])
    return res["command"]


def promotion_text(res: PromotionResult, fmt: str = "simple") -> str:
    """``ggufx recipe --imatrix --budget`` (``results.recipe``): the promotions, most important
    first, the BPW and size they reach, and the llama-quantize command."""
    rows = [
        (
            p["name"],
            f"{p['importance']:.6g}",
            f"{p['rank']}/{p['role_count']}",
            p["from"],
            p["to"],
            f"{p['added_bytes'] / MiB:.3f}",
        )
        for p in res["promotions"]
    ]
    out = []
    if rows:
        out.append(table.render(rows, ("tensor", "importance", "rank", "from", "to", "added MiB"), fmt, align="lrrllr"))
    else:
        out.append("no promotion fits the budget")
    bpw, tb = res["bpw"], res["tensor_bytes"]
    out.append(
        f"\n{len(res['promotions'])} tensor(s) promoted by {len(res['promotion_rules'])} rule(s); "
        f"BPW {bpw['before']:.4f} -> {bpw['after']:.4f} (budget {res['budget_bpw']:g}); "
        f"tensors {tb['before'] / MiB:.2f} -> {tb['after'] / MiB:.2f} MiB (+{tb['added'] / MiB:.2f} MiB)"
    )
    if not res["verified"]:
        out.append("warning: the command would not reproduce every other tensor's type")
    out.append("\n" + res["command"])
    return "\n".join(out)


def diff_text(res: DiffResult, fmt: str = "simple") -> str:
    """``ggufx diff`` (``results.diff``)."""
    out = []
    if res["type_changes"]:
        out.append(
            table.render(
                [(c["role"], c["layers"] or "-", c["before"], c["after"], c["tensors"]) for c in res["type_changes"]],
                ("role", "layers", "A", "B", "tensors"),
                fmt,
                align="lllll",
            )
        )
    md = res["metadata"]
    for label, names in (
        ("added tensors", res["tensors_added"]),
        ("removed tensors", res["tensors_removed"]),
        ("shape changes", res["shape_changes"]),
        ("metadata added", md["added"]),
        ("metadata removed", md["removed"]),
        ("metadata changed", md["changed"]),
    ):
        if names:
            out.append(f"{label}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    bpw, tb, fb = res["bpw"], res["tensor_bytes"], res["file_bytes"]
    out.append(
        f"BPW {bpw['a']:.4f} -> {bpw['b']:.4f} ({bpw['change']:+.4f}); tensor bytes {tb['a']:,} -> "
        f"{tb['b']:,} ({tb['change']:+,}); file {fb['a']:,} -> {fb['b']:,}"
    )
    if res["identical_tensors"]:
        out.append("tensors: same names, shapes and types")
    return "\n".join(out)


MiB = 1 << 20


def fit_text(res: FitResult, fmt: str = "simple") -> str:
    """``ggufx mem --fit`` (``results.fit``): llama.cpp's answer (arguments to paste), then ggufx's
    largest context per cache type, or the most layers."""
    head = []
    vision = res.get("projector_bytes") or {}
    if vision:
        kept = ", ".join(f"{k} {v / MiB:,.0f} MiB" for k, v in vision.items())
        head += [f"+ vision: the projector's weights and compute kept free ({kept}), as llama-server does", ""]
    if "llama_cpp" in res:
        lc = res["llama_cpp"]
        why = {
            "unchanged": "everything fits as given",
            "context": "the context reduced",
            # an MoE's fit moves expert tensors (-ot ...=CPU) before whole layers; a dense model's, layers (-ngl)
            "layers": "expert tensors moved off the GPUs"
            if " -ot " in f" {lc['args']} "
            else "layers moved off the GPUs",
        }
        margins = sorted({v // MiB for v in lc["margin"].values()})
        head.append(f"llama.cpp --fit (-fitt {','.join(str(m) for m in margins)} MiB):")
        if lc["status"] == "failed":
            head.append(f"  fails: {lc['message']}")
        else:
            head.append(f"  {lc['args']}")
            head.append(f"  ({why[lc['status']]})")
        uses = ", ".join(
            f"{k} {v / MiB:,.0f} MiB used of {lc['free'][k] / MiB:,.0f} MiB free, "
            f"{lc['margin'][k] / MiB:,.0f} kept free"
            for k, v in lc["use"].items()
        )
        given = res["budget"] if isinstance(res["budget"], list) else [res["budget"]]
        held = [b - lc["free"][k] for k, b in zip(lc["free"], given, strict=False)]
        if any(held):
            seen = ", ".join(f"{k} {h / MiB:,.0f} MiB" for k, h in zip(lc["free"], held, strict=False))
            free_is = (
                f"free: the size given less what llama.cpp's fit holds as it reads it ({seen}: "
                "the recurrent state, a page per GPU it works on)"
            )
        else:
            free_is = "free: the size given"
        head += [f"  ggufx's figures there: {uses}", f"  ({free_is}; kept free: the -fitt margin)"]
        draft = res.get("draft")
        if draft is not None:
            sizes = ", ".join(f"{k} {v / MiB:,.0f} MiB" for k, v in draft["bytes"].items())
            head.append(
                f"  draft model ({sizes}): counted in these figures, fitted beside the target"
                if draft["fitted"]
                else f"  + draft model ({sizes}) on top: not in these figures, {draft['reason']}"
            )
        head.append("")
    if res["fits"] and res["fits"][0]["fit"] == "layers":
        rows = [
            (
                f["cache_type"],
                f"{f['n_gpu_layers']} of {f['n_layer'] + 1}" + (" (all)" if f["capped"] else ""),
                ", ".join(f"{k} {v / MiB:,.0f}" for k, v in f["use"].items()),
            )
            for f in res["fits"]
        ]
        out = "\n".join(head) + table.render(rows, ("KV cache type", "most -ngl", "GPU MiB"), fmt, align="lrl")
        return out + "".join(f"\nnote: {note}" for note in res.get("notes", []))
    ctx_rows = [
        (
            f["cache_type"],
            f"{f['n_ctx']:,}" + (" (training context)" if f["capped_at_training_context"] else ""),
            "-" if f.get("llama_cpp_n_ctx") is None else f"{f['llama_cpp_n_ctx']:,}",
            ", ".join(f"{k} {v / MiB:,.0f}" for k, v in f["use"].items()),
        )
        for f in res["fits"]
    ]
    if len(ctx_rows) > 1 and len({r[1:] for r in ctx_rows}) == 1:  # no KV cache (an encoder, a recurrent model)
        ctx_rows = [("any (the same for every type)", *ctx_rows[0][1:])]
    out = "\n".join(head) + table.render(
        ctx_rows, ("KV cache type", "largest context", "llama.cpp --fit", "GPU MiB"), fmt, align="lrrl"
    )
    return out + "".join(f"\nnote: {note}" for note in res.get("notes", []))


def _embedding_run(pooling: str | None) -> str:
    """The context line's word on an embedding run: the pooling in effect (``--pooling``, else the file's)."""
    return f", embedding run ({'no' if pooling in (None, 'none') else pooling} pooling)"


def memory_devices_text(res: MemoryResult, fmt: str = "simple") -> str:
    """``ggufx mem`` (``results.memory``): llama.cpp's memory breakdown per device, then the caches."""
    rows = []
    for d in res["devices"]:
        total = d["self"] + d["output"] + d.get("companions", 0)
        free = d["free"]
        verdict = "" if not free else ("yes" if total <= free else f"no: {(total - free) / MiB:,.0f} MiB short")
        rows.append(
            (
                d["name"],
                f"{d['model'] / MiB:,.2f}",
                f"{d['context'] / MiB:,.2f}",
                f"{d['compute'] / MiB:,.2f}",
                f"{d['output'] / MiB:,.2f}",
                f"{d.get('companions', 0) / MiB:,.2f}",
                f"{total / MiB:,.2f}",
                f"{free / MiB:,.0f}" if free else "-",
                verdict,
            )
        )
    table_text = table.render(
        rows,
        (
            "device",
            "model MiB",
            "context MiB",
            "compute MiB*",
            "output MiB",
            "companions MiB",
            "total MiB",
            "free MiB",
            "fits",
        ),
        fmt,
        align="lrrrrrrrl",
    )
    kv, rec = res["kv_cache"], res["recurrent_state"]
    full, swa = kv["full_attention"], kv["sliding_window"]
    lines = [
        table_text,
        "* computed: llama.cpp's graph, split and allocated as llama.cpp does (an estimate where a note says"
        " so); every other figure is exact.",
        f"context {res['n_ctx']:,} tokens ({res['n_streams']} stream(s) of {res['n_ctx_seq']:,}), micro-batch "
        f"{res['n_ubatch']}, {res['layers_offloaded']}/{res['n_layer'] + 1} layers offloaded, "
        + (
            f"KV cache K {res['cache_type_k']} V {res['cache_type_v']}"
            if full["layers"] or swa["layers"]
            else "no KV cache"
        )
        + (_embedding_run(res["pooling"]) if res.get("embeddings") else ""),
    ]
    if full["layers"]:
        line = f"KV cache: {full['layers']} full-attention layers x {full['cells']:,} cells = {full['bytes'] / MiB:,.2f} MiB"
        indexer = kv.get("indexer") or {}
        if indexer.get("layers"):
            line += f" (with the sparse-attention indexer's cache, {indexer['layers']} layers: {indexer['bytes'] / MiB:,.2f} MiB)"
        lines.append(line)
    if swa["layers"]:
        lines.append(
            f"KV cache: {swa['layers']} sliding-window layers x {swa['cells']:,} cells = {swa['bytes'] / MiB:,.2f} MiB"
        )
    if rec["layers"]:
        lines.append(
            f"recurrent state: {rec['layers']} layers x {res['parallel']} sequence(s) = {rec['bytes'] / MiB:,.2f} MiB"
        )
    lines += [f"note: {note}" for note in res["notes"]]
    return "\n".join(lines)


def memory_check_text(res: MemoryCheckResult, fmt: str = "simple") -> str:
    """``ggufx mem --check LOG`` (``results.memory_check``): llama.cpp's figure, ggufx's, difference."""

    def num(v: float | None, spec: str = ",.2f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [
        (
            r["kind"],
            r["buft"],
            num(r["llama_cpp_mib"]),
            num(r["ggufx_mib"]),
            num(r["difference_mib"], "+,.2f"),
            num(r["difference_pct"], "+.1f") + ("%" if r["difference_pct"] is not None else ""),
            "exact" if r["exact"] else "computed",
            "ok" if r["ok"] else "MISMATCH",
        )
        for r in res["rows"]
    ]
    text = table.render(
        rows,
        ("buffer", "type", "llama.cpp MiB", "ggufx MiB", "difference", "%", "figure", "check"),
        fmt,
        align="llrrrrll",
    )
    bad = sum(not r["ok"] for r in res["rows"])
    verdict = ("every buffer agrees" if not bad else f"{bad} buffer(s) differ") + (
        f" (exact ones to 0.01 MiB, computed ones within {100 * res['tolerance']:g}%)"
    )
    return f"{text}\n{verdict}"


def imatrix_text(res: ImatrixResult, fmt: str = "simple") -> str:
    """``ggufx imatrix`` (``results.imatrix``): facts, one row per tensor, then the disagreements."""
    with_model = res["model"] is not None
    chunks = "-" if res["chunk_count"] is None else f"{res['chunk_count']:,}"
    size = "-" if res["chunk_size"] is None else f"{res['chunk_size']:,}"
    head = [
        f"imatrix   {res['path']}",
        f"datasets  {', '.join(res['datasets']) or '-'}",
        f"chunks    {chunks} of {size} tokens, {res['count']} tensors",
    ]
    if with_model:
        head.append(f"model     {res['model']}")
    headers = ["tensor", "role", "rank", "importance", "∑ E[A²]"] + (["type"] if with_model else [])
    rows = []
    for t in res["tensors"]:
        imp = "-" if t["importance"] is None else f"{t['importance']:.6g}"
        row: list[Any] = [t["name"], t["role"], f"{t['rank']}/{t['role_count']}", imp, f"{t['sum_sq']:.4f}"]
        if with_model:
            row.append(t["type"] or "(absent)")
        rows.append(row)
    text = "\n".join(head) + "\n\n" + table.render(rows, headers, fmt, align="llrrr" + ("l" if with_model else ""))
    if with_model:
        common = ", ".join(f"{r} {ty}" for r, ty in res.get("most_common_type", {}).items()) or "-"
        text += f"\n\nmost common type per role: {common}"
        for names, what in (
            (res.get("high_at_common_type", []), "top quartile of their role but left at its most common type"),
            (res.get("low_not_at_common_type", []), "outside the top quartile but given another type"),
        ):
            text += f"\n{len(names)} tensor(s) {what}" + (f": {', '.join(names)}" if names else "")
        if res.get("missing_in_model"):
            text += f"\nnot in the model: {', '.join(res.get('missing_in_model', []))}"
    return text


# every rendering is printable: bytes of the file that were not UTF-8 shown as \xNN escapes
info_text = _printable(info_text)
tensors_text = _printable(tensors_text)
value_text = _printable(value_text)
meta_text = _printable(meta_text)
roles_text = _printable(roles_text)
layers_text = _printable(layers_text)
recipe_text = _printable(recipe_text)
promotion_text = _printable(promotion_text)
diff_text = _printable(diff_text)
fit_text = _printable(fit_text)
memory_devices_text = _printable(memory_devices_text)
memory_check_text = _printable(memory_check_text)
imatrix_text = _printable(imatrix_text)


def hash_text(res: HashResult, per_tensor: bool) -> str:
    """``ggufx hash``: the fingerprint and the metadata hash, then (``per_tensor``) every tensor's."""
    lines = [f"fingerprint    {res['fingerprint']}", f"metadata hash  {res['metadata_hash']}"]
    if per_tensor:
        lines += [f"{t['hash']}  {t['type']:<8} {name}" for name, t in res.get("tensors", {}).items()]
    return "\n".join(lines)


def verify_text(res: VerifyResult) -> str:
    """``ggufx verify``: OK or FAIL per file, and what differs."""
    lines = []
    for r in res["results"]:
        lines.append(f"{'OK  ' if r['ok'] else 'FAIL'} {r['path']}: {r['verdict']}")
        for label, key in (
            ("tensors changed", "tensors_changed"),
            ("tensors added", "tensors_added"),
            ("tensors removed", "tensors_removed"),
            ("metadata changed", "metadata_changed"),
            ("metadata added", "metadata_added"),
            ("metadata removed", "metadata_removed"),
        ):
            names = r[key]
            if names:
                lines.append(f"     {label}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    return "\n".join(lines)


def check_lines(res: CheckResult) -> list[tuple[bool, str]]:
    """``ggufx check``: (passed, ``FILE: RULE: REASON``) per rule of every file."""
    return [(x["passed"], f"{f['path']}: {x['rule']}: {x['reason']}") for f in res["files"] for x in f["results"]]


def _scan_dialect(dialect: str | None) -> str:
    """The tool-call dialect of a file's template: ``-`` without a template, ``not rendered`` for
    chat.dialect's ``none`` (a template that shows no tool calls is still a template)."""
    if dialect is None:
        return "-"
    return "not rendered" if dialect == "none" else dialect


def scan_text(res: ScanResult) -> str:
    """``ggufx scan``: one row per file, the companion files and the models they fit, the counts."""
    rows = res["models"]
    text = table.render(
        [
            (
                r["name"],
                r["kind"] or "-",
                r["architecture"] or "-",
                human_params(r["parameters"]) if r["parameters"] else "-",
                r["file_type"] or "-",
                f"{r['bpw']:.2f}" if r["bpw"] is not None else "-",
                human_bytes(r["file_bytes"]) if r["file_bytes"] else "-",
                _scan_dialect(r["dialect"]),
                "; ".join(r["problems"]) or "ok",
            )
            for r in rows
        ],
        ("file", "kind", "arch", "params", "type", "BPW", "size", "tool calls", "problems"),
        align="lllrlrrll",
    )
    pairs = [
        f"  {r['kind']} {r['name']}: fits {len(r['companion_of'])} of {len(r['companion_of']) + len(r['mismatches'])} model(s)"
        + "".join(f"\n    not {m['model']}: {m['reason']}" for m in r["mismatches"])
        for r in rows
        if r["companion_of"] or r["mismatches"]
    ]
    if pairs:
        text += "\n\ncompanion files and the models beside them:\n" + "\n".join(pairs)
    n_models = sum(1 for r in rows if r["kind"] in ("model", None))
    extra = f"{len(rows) - n_models} companion file(s), " if len(rows) > n_models else ""
    return text + f"\n\n{n_models} model(s), {extra}{sum(1 for r in rows if r['problems'])} with problems"


def lint_lines(res: TemplateLintResult) -> list[tuple[str | None, str]]:
    """``template lint``: (colour, line) per problem, the template's family and dialect, the verdict."""
    out: list[tuple[str | None, str]] = []
    for p in res["problems"]:
        where = f" (line {p['line']})" if p["line"] else ""
        out.append(
            (
                {"error": "red", "warning": "yellow"}.get(p["severity"]),
                f"{p['severity']}: {p['code']}{where}: {p['message']}",
            )
        )
    info = res["template"]
    if info:
        out.append((None, f"family {info['family']}, tool-call dialect {info['dialect']}"))
    n = sum(p["severity"] in ("error", "warning") for p in res["problems"])
    out.append((None, "ok" if res["ok"] else f"{n} problem(s)"))
    return out


def template_info_text(i: TemplateInfoResult) -> str:
    """``template info``: one fact per line, llama.cpp's and llama-server's capability flags."""
    rows = [
        ("length", f"{i['length']:,} characters"),
        ("sha256", i["sha256"]),
        ("family", i["family"]),
        ("tool-call dialect", i["dialect"] + (f"  {i['dialect_description']}" if i["dialect_description"] else "")),
        ("tool definitions", "shown to the model" if i["supports_tools"] else "not shown"),
        ("tool calls", "rendered" if i["renders_tool_calls"] else "not rendered"),
        ("reasoning", "yes" if i["reasoning"] else "no"),
        ("system role", i["system_role"]),
    ]
    for label, caps in (("llama.cpp", i["llama_cpp_caps"]), ("llama-server", i.get("llama_server_caps"))):
        if caps:
            rows.append((f"{label} supports", ", ".join(k.removeprefix("supports_") for k, v in caps.items() if v)))
            rows.append((f"{label} lacks", ", ".join(k.removeprefix("supports_") for k, v in caps.items() if not v)))
    if i["llama_cpp_error"]:
        rows.append(("llama.cpp", f"error: {i['llama_cpp_error']}"))
    lines = [f"{k:18} {v}" for k, v in rows]
    lines += [f"{'error (' + n + ')':18} {err}" for n, err in i["errors"].items()]
    return "\n".join(lines)
