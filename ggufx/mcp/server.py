"""``ggufx mcp``: the read-only library as Model Context Protocol tools, for agents.

Every tool returns the JSON object the matching CLI command prints with ``--json`` (the same
:mod:`ggufx.results` function builds both), as text and as structured content. A bad file or a bad
argument is a tool error whose text is the CLI's one-line message; nothing a caller sends can stop
the server.

Security: tools read only files under the roots given at start-up (``--root``, default the current
directory), checked after resolving symlinks, for every shard of a split model; remote sources
(https://, hf://) and llama-servers other than on this machine are refused unless
``--allow-remote``; the edit tools exist only with ``--allow-write`` and go through the crash-safe
edit engine, still only under the roots. Hostile files and templates are as bounded as in the CLI
(the same reader, the same sandbox).

Needs the optional extra: ``pip install 'ggufx[mcp]'`` (the official ``mcp`` SDK, v2).
"""

# no `from __future__ import annotations`: the SDK reads the tools' annotations, which name types
# defined inside build_server()
import json
import os
from typing import Annotated, Any, Callable, Literal, Optional

from ggufx.errors import GGUFError
from ggufx.results import CACHE_TYPES, SORT_ORDERS, InputError
from ggufx.io.sources import is_remote

MAX_RESOURCES = 500
SAMPLES = ("plain", "system", "multi-turn", "tools", "reasoning")

INSTRUCTIONS = """\
ggufx inspects GGUF model files (llama.cpp, Ollama, LM Studio) from their headers: no tensor data
is loaded, so even a 200 GB model answers in milliseconds. Start with `info` (architecture,
parameters, bits per weight, type histogram), then `roles` (where the bits go), `layers` (layer
kinds: attention, sliding-window, recurrent, MoE), `memory` (bytes at a context length) and
`template_lint`. `tensors` pages through tensors with filters. Sizes are bytes unless a key says
MiB; context lengths are tokens. Paths are relative to the first allowed root or absolute."""


class AccessError(Exception):
    """A path or URL the server may not touch."""


def _ggml_type_names() -> tuple[str, ...]:
    from ggufx.format.ggmltypes import all_types

    return tuple(t.name for t in all_types())


def build_server(roots: list[str], allow_write: bool = False, allow_remote: bool = False) -> Any:
    """An ``mcp.server.MCPServer`` with ggufx's tools, resources and prompt."""
    from mcp.server import MCPServer
    from mcp.types import CallToolResult, TextContent
    from pydantic import Field

    from ggufx import results
    from ggufx.render.jsontext import dumps

    real_roots = [os.path.realpath(r) for r in roots]
    for r in real_roots:
        if not os.path.isdir(r):
            raise ValueError(f"root {r} is not a directory")

    server = MCPServer("ggufx", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING")

    # -- access rules -----------------------------------------------------------------------
    def inside(real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots)

    def local(path: str) -> str:
        if is_remote(path):
            if not allow_remote:
                raise AccessError(f"{path}: remote sources are disabled (start the server with --allow-remote)")
            return path
        full = path if os.path.isabs(path) else os.path.join(real_roots[0], path)
        real = os.path.realpath(full)
        if not inside(real):
            raise AccessError(f"{path}: outside the allowed roots ({', '.join(real_roots)})")
        return real

    def open_model(path: str):
        from ggufx.model import open_model as _open

        model = _open(local(path))
        for s in model.shards:
            if not is_remote(s.path) and not inside(os.path.realpath(s.path)):
                raise AccessError(f"{s.path}: a shard of {path} lies outside the allowed roots")
        return model

    def load_templates(path: str):
        """(resolved path, template set): results name the file as the CLI would given that path."""
        from ggufx.chat.sources import from_model, is_gguf, load

        src = local(path)
        if is_remote(src) or is_gguf(src):
            return src, from_model(open_model(path), src)  # every shard checked against the roots
        return src, load(src)

    # -- results -----------------------------------------------------------------------------
    def ok(d: Any) -> CallToolResult:
        text = dumps(d)
        try:
            structured = json.loads(text) if isinstance(d, dict) else {"result": json.loads(text)}
        except ValueError:  # pragma: no cover - dumps always writes JSON
            structured = None
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)

    def fail(message: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)

    def guarded(fn: Callable[..., Any]) -> Callable[..., CallToolResult]:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
            try:
                return ok(fn(*args, **kwargs))
            except GGUFError as e:
                return fail(e.one_line())
            except InputError as e:
                return fail(f"{e.param}: {e}" if e.param else str(e))
            except AccessError as e:
                return fail(str(e))
            except Exception as e:  # never take the server down
                return fail(f"internal error: {type(e).__name__}: {e}")

        import inspect

        del wrapper.__wrapped__  # the SDK must see the wrapper's signature: CallToolResult, not dict
        wrapper.__signature__ = inspect.signature(fn).replace(return_annotation=CallToolResult)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, "return": CallToolResult}
        return wrapper

    def tool(description: str, read_only: bool = True) -> Callable[[Callable[..., Any]], Any]:
        from mcp.types import ToolAnnotations

        def register(fn: Callable[..., Any]) -> Any:
            server.add_tool(guarded(fn), name=fn.__name__.rstrip("_"), description=description,
                            annotations=ToolAnnotations(readOnlyHint=read_only, destructiveHint=False if read_only else True,
                                                        openWorldHint=allow_remote))
            return fn
        return register

    Path = Annotated[str, Field(description="A GGUF file: relative to the first allowed root, or absolute. Any shard of a split model gives the whole model.")]
    TypeName = Literal[_ggml_type_names()]  # type: ignore[valid-type]
    CacheType = Literal[CACHE_TYPES]  # type: ignore[valid-type]

    # -- read-only tools ---------------------------------------------------------------------
    @tool("The GGUF models under the allowed roots, one row each (split sets once): name, path, architecture, "
          "parameters, file type, BPW, size in bytes, chat template dialect and problems. Use a path from here in the other tools.")
    def list_models(lint: Annotated[bool, Field(description="Also lint each distinct chat template (slower).")] = False) -> dict:
        from ggufx.analysis.scan import scan

        rows = [r for r in scan(real_roots, lint_templates=lint) if inside(os.path.realpath(r.path))]
        return {"roots": real_roots, "models": [r.to_dict() for r in rows]}

    @tool("Model summary: architecture, parameters, file size (bytes), bits per weight as llama.cpp reports it, "
          "type histogram, context length (tokens), layers, vocabulary size, chat template presence.")
    def info(path: Path) -> dict:
        return results.info(open_model(path))

    @tool("Type histogram: for each ggml type, the number of tensors, elements and bytes; with the tensor count and BPW.")
    def type_histogram(path: Path) -> dict:
        d = results.info(open_model(path))
        return {"path": d["path"], "tensor_count": d["tensor_count"], "bpw": d["bpw"], "types": d["types"]}

    @tool("Where the bits go: per tensor role (attn_v, ffn_down, ssm_out, token_embd, ...) the tensor count, "
          "types, parameters, bytes, share of all tensor bytes and bits per weight.")
    def roles(path: Path) -> dict:
        return results.roles(open_model(path))

    @tool("Layer grid: each layer's kind (full attention, sliding-window attention, recurrent such as Mamba or "
          "Gated DeltaNet, dense or MoE feed-forward) and the ggml type of each role; identical neighbours collapsed.")
    def layers(path: Path, collapse: Annotated[bool, Field(description="Merge identical neighbouring layers into one row.")] = True) -> dict:
        return results.layers(open_model(path), collapse=collapse)

    @tool("List tensors (name, type, shape, elements, bytes, BPW, offset) with filters, one page at a time. "
          "`count` is how many matched; ask again with offset=next_offset for the next page.")
    def tensors(path: Path,
                types: Annotated[Optional[list[TypeName]], Field(description="Only these ggml types, e.g. [\"Q6_K\", \"F32\"].")] = None,
                grep: Annotated[Optional[str], Field(description="Python regular expression searched in tensor names, e.g. \"ffn_down\".")] = None,
                layers: Annotated[Optional[str], Field(description="Only layers (blk.N) in this range: \"12\" or \"10-19\".")] = None,
                sort: Annotated[Literal[SORT_ORDERS], Field(description="Order: file offset, name, size (largest first), type, BPW (highest first).")] = "offset",  # type: ignore[valid-type]
                offset: Annotated[int, Field(ge=0, description="Skip this many matching tensors.")] = 0,
                limit: Annotated[int, Field(ge=1, le=1000, description="At most this many tensors in the answer.")] = 100) -> dict:
        return results.tensors(open_model(path), types or (), grep, sort, layers, offset, limit)

    @tool("Metadata: every key with its GGUF type and value (arrays summarised unless full), or one key's whole value.")
    def metadata(path: Path,
                 key: Annotated[Optional[str], Field(description="One key, e.g. \"general.architecture\" or \"tokenizer.chat_template\".")] = None,
                 full: Annotated[bool, Field(description="List whole strings and arrays (a vocabulary is large).")] = False) -> dict:
        return results.meta(open_model(path), key, full)

    @tool("The llama-quantize recipe (--pure, base type, --tensor-type rules) that reproduces this quant's per-tensor types.")
    def recipe(path: Path) -> dict:
        return results.recipe(open_model(path))

    @tool("Memory as llama.cpp allocates it at a context length: weights, KV cache (attention layers; sliding-window "
          "layers hold only the window), recurrent state, compute estimate. Bytes, and MiB where a key says so.")
    def memory(path: Path,
               ctx: Annotated[int, Field(ge=0, description="Context length in tokens; 0 = the model's training context.")] = 0,
               cache_type_k: Annotated[CacheType, Field(description="K cache type.")] = "f16",
               cache_type_v: Annotated[CacheType, Field(description="V cache type (quantized needs flash attention).")] = "f16",
               flash_attn: bool = True,
               parallel: Annotated[int, Field(ge=1, description="Sequences served in parallel.")] = 1,
               n_gpu_layers: Annotated[int, Field(ge=-1, description="Layers offloaded to the GPU; -1 = all.")] = -1) -> dict:
        return results.memory(open_model(path), ctx, cache_type_k, cache_type_v, flash_attn, parallel, 512, n_gpu_layers)

    @tool("The largest context (tokens) that fits a GPU memory budget, for f16, q8_0 and q4_0 KV caches.")
    def fit(path: Path, budget: Annotated[str, Field(description="GPU memory, e.g. \"24GiB\", \"16GB\", or bytes.")]) -> dict:
        return results.fit(open_model(path), budget)

    @tool("Compare two quants: type changes by role and layer range, added/removed tensors, metadata changes, BPW and size change.")
    def diff(a: Path, b: Path) -> dict:
        return results.diff(open_model(a), open_model(b))

    @tool("Chat template facts: length, sha256, family, tool-call dialect, tool support, reasoning blocks, system role.")
    def template_info(path: Annotated[str, Field(description="A GGUF, .jinja or tokenizer_config.json under the roots.")],
                      name: Annotated[Optional[str], Field(description="A named template, e.g. \"tool_use\".")] = None) -> dict:
        return results.template_info(*load_templates(path), name)

    @tool("Lint the chat template: syntax errors with lines, failing built-in conversations, refused system role, "
          "double BOS, special tokens missing from the vocabulary. `ok` is false when something is wrong.")
    def template_lint(path: Annotated[str, Field(description="A GGUF, .jinja or tokenizer_config.json under the roots.")],
                      name: Optional[str] = None) -> dict:
        src, ts = load_templates(path)
        return results.template_lint(src, ts, name, None, ts.model).to_dict()

    @tool("Render the chat template in a sandbox (as transformers' apply_chat_template) for a built-in sample "
          "conversation or your own messages, to see exactly what the model receives.")
    def template_render(path: Annotated[str, Field(description="A GGUF, .jinja or tokenizer_config.json under the roots.")],
                        sample: Annotated[Literal[SAMPLES], Field(description="Built-in conversation, used when messages is not given.")] = "tools",  # type: ignore[valid-type]
                        messages: Annotated[Optional[list[dict[str, Any]]], Field(description="Messages like [{\"role\": \"user\", \"content\": \"hi\"}].")] = None,
                        tools: Annotated[Optional[list[dict[str, Any]]], Field(description="Tool schemas (OpenAI style).")] = None,
                        add_generation_prompt: bool = True,
                        name: Optional[str] = None) -> dict:
        from ggufx.chat.samples import sample as builtin

        if messages is not None:
            conv: dict[str, Any] = {"messages": messages}
            label = "messages"
        else:
            conv, label = builtin(sample), sample
        if tools is not None:
            conv["tools"] = tools
        return results.template_render(*load_templates(path), [(label, conv)], name, add_generation_prompt)

    @tool("Hash every tensor's data (reads the whole file: seconds per GB) and the model fingerprint, which ignores metadata and sharding.")
    def hash_(path: Path, algo: Literal["xxh3-128", "sha256"] = "xxh3-128",
              per_tensor: Annotated[bool, Field(description="Include each tensor's hash (long for big models).")] = False) -> dict:
        from ggufx.analysis.hashing import hash_model

        return hash_model(open_model(path), algo).to_dict(per_tensor=per_tensor)

    @tool("Check a model against a manifest written by `ggufx manifest`: which tensors or metadata keys differ.")
    def verify(manifest: Annotated[str, Field(description="manifest.json under the roots.")], path: Path) -> dict:
        from ggufx.analysis.hashing import hash_model, verify as run_verify

        with open(local(manifest), encoding="utf-8") as f:
            doc = json.load(f)
        model = open_model(path)
        models = doc.get("models", []) if isinstance(doc, dict) else []
        entries = [m for m in models if os.path.basename(m.get("path", "")) == os.path.basename(model.path)]
        if not entries and len(models) == 1:
            entries = models
        if not entries:
            raise InputError(f"{manifest}: no model named {os.path.basename(model.path)} in the manifest", "manifest")
        result = run_verify(entries[0], hash_model(model, entries[0].get("algo", "xxh3-128")))
        return {"manifest": manifest, "ok": result.ok, "results": [result.to_dict()]}

    @tool("The model a running llama-server has loaded (asks its /props): the file's summary, the server's context "
          "size, and whether the server's chat template is the file's (they differ after --chat-template overrides).")
    def server_model(url: Annotated[str, Field(description="The llama-server, e.g. \"http://127.0.0.1:8080\".")]) -> dict:
        from urllib.parse import urlsplit

        from ggufx.io.llamaserver import query

        host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
        if not allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
            raise AccessError(f"{url}: only a llama-server on this machine may be asked (start with --allow-remote)")
        sm = query(url)
        model = open_model(sm.model_path)
        sm.file_template = model.metadata.get_str("tokenizer.chat_template")
        return {"server": sm.to_dict(), "info": results.info(model)}

    # -- write tools -------------------------------------------------------------------------
    if allow_write:
        from ggufx.edit.engine import Delete, Set, edit
        from ggufx.format.values import ValueType

        def do_edit(path: str, ops: list[Any], dry_run: bool) -> dict:
            real = local(path)
            if is_remote(real):
                raise AccessError(f"{path}: a remote file cannot be edited")
            return edit(real, ops, dry_run=dry_run).to_dict()

        @tool("Set one metadata key in place (crash-safe; the file is the old or the new one at every instant). "
              "The type is the key's existing type, else the one llama.cpp expects for it.", read_only=False)
        def set_metadata(path: Path, key: str, value: Annotated[Any, Field(description="String, number, boolean or list.")],
                         dry_run: bool = False) -> dict:
            return do_edit(path, [Set(key, value)], dry_run)

        @tool("Delete metadata keys in place (crash-safe).", read_only=False)
        def delete_metadata(path: Path, keys: list[str], dry_run: bool = False) -> dict:
            return do_edit(path, [Delete(k) for k in keys], dry_run)

        @tool("Replace the chat template (tokenizer.chat_template, or a named one) in place, crash-safe.", read_only=False)
        def set_template(path: Path, template: Annotated[str, Field(description="The Jinja template text.")],
                         name: Optional[str] = None, dry_run: bool = False) -> dict:
            from ggufx.chat.sources import key_for

            return do_edit(path, [Set(key_for(name), template, ValueType.STRING)], dry_run)

    # -- resources and prompt ----------------------------------------------------------------
    from mcp.server.mcpserver.resources import FunctionResource

    for path in _models_under(real_roots)[:MAX_RESOURCES]:
        def read(p: str = path) -> str:
            try:
                return dumps(results.info(open_model(p)))
            except (GGUFError, AccessError) as e:
                return dumps({"error": str(e) if isinstance(e, AccessError) else e.one_line()})
        server.add_resource(FunctionResource(uri=f"gguf://{path}", name=os.path.basename(path),
                                             description="Summary of this GGUF (what the info tool returns)",
                                             mime_type="application/json", fn=read))

    @server.prompt(name="audit_quant", description="Audit a quantized GGUF: summary, where the bits go, chat template, memory.")
    def audit_quant(path: str, ctx: str = "32768") -> str:
        return (f"Audit the GGUF model {path} with the ggufx tools, one step at a time:\n"
                f"1. `info`: architecture, parameters, file type, BPW and the type histogram.\n"
                f"2. `roles`: which roles (attn_v, ffn_down, ssm_out, token_embd, output...) got which types and "
                f"what share of the bytes; note anything kept at high precision or cut low.\n"
                f"3. `layers`: the layer kinds (attention, sliding-window, recurrent, MoE) and where types change.\n"
                f"4. `template_lint` and `template_info`: is the chat template valid, which tool-call dialect does it "
                f"write, does it accept a system message?\n"
                f"5. `memory` with ctx={ctx} for f16 and q8_0 caches, and `fit` for the user's GPU if known.\n"
                f"Then summarise in a few lines: what this quant is, its risks, and what it costs to run.")

    return server


def _models_under(roots: list[str]) -> list[str]:
    """GGUF files under the roots (first shard only for split models), sorted."""
    from ggufx.model.shards import SHARD_RE

    out: list[str] = []
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(files):
                if not f.endswith(".gguf"):
                    continue
                m = SHARD_RE.match(f)
                if m and int(m["no"]) != 1:
                    continue
                out.append(os.path.join(dirpath, f))
                if len(out) >= MAX_RESOURCES:
                    return out
    return out


def _version() -> str:
    from ggufx._version import __version__

    return __version__


def run(roots: list[str], allow_write: bool = False, allow_remote: bool = False, http: str | None = None) -> None:
    server = build_server(roots, allow_write, allow_remote)
    if http is None:
        server.run("stdio")
        return
    host, _, port = http.rpartition(":")
    server.run("streamable-http", host=host or "127.0.0.1", port=int(port))
