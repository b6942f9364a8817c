"""The MCP tools: one method of :class:`GGUFTools` per tool, each marked with :func:`tool`, which
puts its description in the table :data:`TOOL_DEFS`; :func:`register_tools` adds them to a server.

Every tool returns the JSON object the matching CLI command prints with ``--json`` (the same
:mod:`ggufx.results` function builds both). Sizes are bytes and context lengths tokens unless a
key or description says otherwise. Imports the MCP SDK: only :func:`ggufx.mcp.server.build_server`
imports this module.
"""

# no `from __future__ import annotations`: the SDK reads the tools' annotations, so they must be
# objects, not strings
import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from ggufx import results
from ggufx.errors import AccessError, GGUFError
from ggufx.io.sources import is_remote
from ggufx.mcp.access import Access
from ggufx.render.jsontext import dumps
from ggufx.results import CACHE_TYPES, SORT_ORDERS, InputError
from ggufx.results.memory import POOLING_TYPES

if TYPE_CHECKING:
    from ggufx.edit.engine import Op

SAMPLES = ("plain", "system", "multi-turn", "tools", "reasoning")
Result = Mapping[str, Any]  # what a tool method returns: the JSON object of the CLI's --json
F = TypeVar("F", bound=Callable[..., Result])


@dataclass(frozen=True, slots=True)
class ToolDef:
    """How one method of :class:`GGUFTools` is offered to clients."""

    method: str
    description: str
    read_only: bool = True  # false: exists only with --allow-write

    @property
    def name(self) -> str:
        """The tool's name: the method's, less a trailing ``_`` (``hash_`` would shadow a builtin)."""
        return self.method.rstrip("_")


TOOL_DEFS: list[ToolDef] = []  # in the order clients list them


def tool(description: str, read_only: bool = True) -> Callable[[F], F]:
    """Mark a method of :class:`GGUFTools` as a tool, adding it to :data:`TOOL_DEFS`."""

    def mark(fn: F) -> F:
        TOOL_DEFS.append(ToolDef(fn.__name__, description, read_only))
        return fn

    return mark


def _ggml_type_names() -> tuple[str, ...]:
    """Every ggml type's name, for the enumeration in the tensors tool's schema."""
    from ggufx.results import ggml_type_names

    return ggml_type_names()


ModelPath = Annotated[
    str,
    Field(
        description="A GGUF file: relative to the first allowed root, or absolute. "
        "Any shard of a split model gives the whole model."
    ),
]
TemplatePath = Annotated[str, Field(description="A GGUF, .jinja or tokenizer_config.json under the roots.")]
TypeName = Literal[_ggml_type_names()]  # type: ignore[valid-type]
CacheType = Literal[CACHE_TYPES]  # type: ignore[valid-type]
Pooling = Literal[POOLING_TYPES]  # type: ignore[valid-type]
SortOrder = Literal[SORT_ORDERS]  # type: ignore[valid-type]
Sample = Literal[SAMPLES]  # type: ignore[valid-type]


class GGUFTools:
    """The tools, reading and writing only what ``access`` permits."""

    def __init__(self, access: Access):
        self.access = access

    # -- read-only tools ---------------------------------------------------------------------
    @tool(
        "The GGUF models under the allowed roots, one row each (split sets once): name, path, architecture, "
        "parameters, file type, BPW, size in bytes, chat template dialect and problems. Use a path from here in "
        "the other tools."
    )
    def list_models(
        self,
        lint: Annotated[bool, Field(description="Also lint each distinct chat template (slower).")] = False,
    ) -> Result:
        return results.scan(self.access.roots, lint_templates=lint, inside=self.access.inside)

    @tool(
        "Model summary: architecture, parameters, file size (bytes), bits per weight as llama.cpp reports it, "
        "type histogram, context length (tokens), layers, vocabulary size, chat template presence."
    )
    def info(self, path: ModelPath) -> Result:
        return results.info(self.access.open_model(path))

    @tool(
        "Type histogram: for each ggml type, the number of tensors, elements and bytes; with the tensor count and BPW."
    )
    def type_histogram(self, path: ModelPath) -> Result:
        return results.type_histogram(self.access.open_model(path))

    @tool(
        "Where the bits go: per tensor role (attn_v, ffn_down, ssm_out, token_embd, ...) the tensor count, "
        "types, parameters, bytes, share of all tensor bytes and bits per weight."
    )
    def roles(self, path: ModelPath) -> Result:
        return results.roles(self.access.open_model(path))

    @tool(
        "Layer grid: each layer's kind (full attention, sliding-window attention, recurrent such as Mamba or "
        "Gated DeltaNet, dense or MoE feed-forward) and the ggml type of each role; identical neighbours collapsed."
    )
    def layers(
        self,
        path: ModelPath,
        collapse: Annotated[bool, Field(description="Merge identical neighbouring layers into one row.")] = True,
    ) -> Result:
        return results.layers(self.access.open_model(path), collapse=collapse)

    @tool(
        "List tensors (name, type, shape, elements, bytes, BPW, offset) with filters, one page at a time. "
        "`count` is how many matched; ask again with offset=next_offset for the next page."
    )
    def tensors(
        self,
        path: ModelPath,
        types: Annotated[
            list[TypeName] | None,  # type: ignore[valid-type]
            Field(description='Only these ggml types, e.g. ["Q6_K", "F32"].'),
        ] = None,
        grep: Annotated[
            str | None, Field(description='Python regular expression searched in tensor names, e.g. "ffn_down".')
        ] = None,
        layers: Annotated[str | None, Field(description='Only layers (blk.N) in this range: "12" or "10-19".')] = None,
        sort: Annotated[
            SortOrder, Field(description="Order: file offset, name, size (largest first), type, BPW (highest first).")
        ] = "offset",
        offset: Annotated[int, Field(ge=0, description="Skip this many matching tensors.")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many tensors in the answer.")] = 100,
    ) -> Result:
        return results.tensors(self.access.open_model(path), types or (), grep, sort, layers, offset, limit)

    @tool("Metadata: every key with its GGUF type and value (arrays summarised unless full), or one key's whole value.")
    def metadata(
        self,
        path: ModelPath,
        key: Annotated[
            str | None, Field(description='One key, e.g. "general.architecture" or "tokenizer.chat_template".')
        ] = None,
        full: Annotated[bool, Field(description="List whole strings and arrays (a vocabulary is large).")] = False,
    ) -> Result:
        model = self.access.open_model(path)
        return results.meta(model, full) if key is None else results.meta_key(model, key)

    @tool(
        "The llama-quantize recipe (--pure, base type, --tensor-type rules) that reproduces this quant's "
        "per-tensor types; with imatrix and budget, the promotions of the most important tensors that "
        "spend that bits-per-weight budget, as one llama-quantize command."
    )
    def recipe(
        self,
        path: ModelPath,
        imatrix: Annotated[
            str | None, Field(description="An importance matrix of this model (llama-imatrix's GGUF), under the roots.")
        ] = None,
        budget: Annotated[
            float | None, Field(gt=0, description="Target bits per weight as llama.cpp prints them (with imatrix).")
        ] = None,
    ) -> Result:
        im = self.access.open_model(imatrix) if imatrix is not None else None
        return results.recipe_or_promotions(self.access.open_model(path), im, budget)

    @tool(
        "An importance matrix (llama-imatrix's GGUF): per tensor the importance its statistics report "
        "(sum_sq = llama-imatrix's sum of in_sum2/counts, importance = its mean) and the rank within its role; "
        "with model, the type each tensor got in that quant and where rank and type disagree."
    )
    def imatrix(
        self,
        path: Annotated[str, Field(description="The imatrix GGUF (llama-imatrix -o), under the roots.")],
        model: Annotated[
            str | None, Field(description="A quant of the model, under the roots: show each tensor's type.")
        ] = None,
    ) -> Result:
        quant = self.access.open_model(model) if model is not None else None
        return results.imatrix(self.access.open_model(path), quant)

    @tool(
        "Memory as llama.cpp allocates it at a context length: weights, KV cache (attention layers; sliding-window "
        "layers hold only the window), recurrent state, compute estimate. Bytes, and MiB where a key says so."
    )
    def memory(
        self,
        path: ModelPath,
        ctx: Annotated[int, Field(ge=0, description="Context length in tokens; 0 = the model's training context.")] = 0,
        cache_type_k: Annotated[CacheType, Field(description="K cache type.")] = "f16",
        cache_type_v: Annotated[
            CacheType, Field(description="V cache type (quantized needs flash attention).")
        ] = "f16",
        flash_attn: bool = True,
        parallel: Annotated[int, Field(ge=1, description="Sequences served in parallel.")] = 1,
        n_gpu_layers: Annotated[int, Field(ge=-1, description="Layers offloaded to the GPU; -1 = all.")] = -1,
        mmproj: Annotated[
            str | None, Field(description="A vision/audio projector (mmproj GGUF) loaded beside it, under the roots.")
        ] = None,
        embedding: Annotated[
            bool, Field(description="An embedding run (llama-server --embedding): embeddings out, pooling nodes.")
        ] = False,
        pooling: Annotated[
            Pooling | None, Field(description="llama.cpp's --pooling (default: the file's pooling type).")
        ] = None,
        spec_type: Annotated[
            str | None,
            Field(description="llama.cpp's --spec-type (draft-mtp: the MTP draft context beside the main one)."),
        ] = None,
    ) -> Result:
        request = results.MemoryRequest(
            ctx=ctx,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            flash_attn=flash_attn,
            parallel=parallel,
            n_gpu_layers=n_gpu_layers,
            mmproj_file=mmproj,
            embedding=embedding,
            pooling=pooling,
            spec_type=spec_type,
        )
        return results.memory(self.access.open_model(path), request, self.access.open_model)

    @tool(
        "The largest context (tokens) that fits a GPU memory budget, for f16, q8_0 and q4_0 KV caches, and what "
        "llama.cpp's --fit would pass (llama_cpp.args)."
    )
    def fit(
        self,
        path: ModelPath,
        budget: Annotated[str, Field(description='GPU memory, e.g. "24GiB", "16GB", or bytes.')],
        mmproj: Annotated[
            str | None, Field(description="A projector (mmproj GGUF) that must fit beside it, under the roots.")
        ] = None,
    ) -> Result:
        request = results.MemoryRequest(fit_budget=budget, mmproj_file=mmproj)
        return results.fit(self.access.open_model(path), request, self.access.open_model)

    @tool(
        "Compare two quants: type changes by role and layer range, added/removed tensors, metadata changes, BPW "
        "and size change."
    )
    def diff(self, a: ModelPath, b: ModelPath) -> Result:
        return results.diff(self.access.open_model(a), self.access.open_model(b))

    @tool(
        "Chat template facts: length, sha256, family, tool-call dialect, tool support, reasoning blocks, system role."
    )
    def template_info(
        self,
        path: TemplatePath,
        name: Annotated[str | None, Field(description='A named template, e.g. "tool_use".')] = None,
    ) -> Result:
        return results.template_info(*self.access.load_templates(path), name)

    @tool(
        "Lint the chat template: syntax errors with lines, failing built-in conversations, refused system role, "
        "double BOS, special tokens missing from the vocabulary. `ok` is false when something is wrong."
    )
    def template_lint(self, path: TemplatePath, name: str | None = None) -> Result:
        src, ts = self.access.load_templates(path)
        return results.template_lint(src, ts, name, None, ts.model)

    @tool(
        "Render the chat template in a sandbox (as transformers' apply_chat_template) for a built-in sample "
        "conversation or your own messages, to see exactly what the model receives."
    )
    def template_render(
        self,
        path: TemplatePath,
        sample: Annotated[
            Sample, Field(description="Built-in conversation, used when messages is not given.")
        ] = "tools",
        messages: Annotated[
            list[dict[str, Any]] | None, Field(description='Messages like [{"role": "user", "content": "hi"}].')
        ] = None,
        tools: Annotated[list[dict[str, Any]] | None, Field(description="Tool schemas (OpenAI style).")] = None,
        add_generation_prompt: bool = True,
        name: str | None = None,
    ) -> Result:
        own = ("messages", {"messages": messages}) if messages is not None else None
        convs = results.conversations(sample, own, tools)
        src, ts = self.access.load_templates(path)
        return results.template_render(src, ts, convs, name, add_generation_prompt)

    @tool(
        "Hash every tensor's data (reads the whole file: seconds per GB) and the model fingerprint, which ignores "
        "metadata and sharding."
    )
    def hash_(
        self,
        path: ModelPath,
        algo: Literal["xxh3-128", "sha256"] = "xxh3-128",
        per_tensor: Annotated[bool, Field(description="Include each tensor's hash (long for big models).")] = False,
    ) -> Result:
        return results.hash_(self.access.open_model(path), algo, per_tensor)

    @tool("Check a model against a manifest written by `ggufx manifest`: which tensors or metadata keys differ.")
    def verify(
        self,
        manifest: Annotated[str, Field(description="manifest.json under the roots.")],
        path: ModelPath,
    ) -> Result:
        local = self.access.local(manifest)
        return results.verify_model(manifest, self.access.open_model(path), local)

    @tool(
        "The model a running llama-server has loaded (asks its /props): the file's summary, the server's context "
        "size, and whether the server's chat template is the file's (they differ after --chat-template overrides)."
    )
    def server_model(
        self,
        url: Annotated[str, Field(description='The llama-server, e.g. "http://127.0.0.1:8080".')],
    ) -> Result:
        from urllib.parse import urlsplit

        host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
        if not self.access.allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
            raise AccessError(f"{url}: only a llama-server on this machine may be asked (start with --allow-remote)")
        return results.server_model(url, self.access.open_model)

    # -- write tools (only with --allow-write) ----------------------------------------------
    @tool(
        "Set one metadata key in place (crash-safe; the file is the old or the new one at every instant). "
        "The type is the key's existing type, else the one llama.cpp expects for it.",
        read_only=False,
    )
    def set_metadata(
        self,
        path: ModelPath,
        key: str,
        value: Annotated[Any, Field(description="String, number, boolean or list.")],
        dry_run: bool = False,
    ) -> Result:
        from ggufx.edit.engine import Set

        return self._edit(path, [Set(key, value)], dry_run)

    @tool("Delete metadata keys in place (crash-safe).", read_only=False)
    def delete_metadata(self, path: ModelPath, keys: list[str], dry_run: bool = False) -> Result:
        from ggufx.edit.engine import Delete

        return self._edit(path, [Delete(k) for k in keys], dry_run)

    @tool("Replace the chat template (tokenizer.chat_template, or a named one) in place, crash-safe.", read_only=False)
    def set_template(
        self,
        path: ModelPath,
        template: Annotated[str, Field(description="The Jinja template text.")],
        name: str | None = None,
        dry_run: bool = False,
    ) -> Result:
        return self._edit(path, [results.set_template_op(template, name)], dry_run)

    def _edit(self, path: str, ops: "list[Op]", dry_run: bool) -> Result:
        """Apply ``ops`` to the local file ``path`` through the crash-safe edit engine."""
        from ggufx.edit.engine import edit

        real = self.access.local(path)
        if is_remote(real):
            raise AccessError(f"{path}: a remote file cannot be edited")
        return edit(real, ops, dry_run=dry_run).to_dict()


def register_tools(server: MCPServer, tools: GGUFTools, allow_write: bool) -> None:
    """Add every tool of :data:`TOOL_DEFS` to ``server``, the write tools only if ``allow_write``."""
    open_world = tools.access.allow_remote
    for d in TOOL_DEFS:
        if not (d.read_only or allow_write):
            continue
        server.add_tool(
            _guarded(getattr(tools, d.method)),
            name=d.name,
            description=d.description,
            annotations=ToolAnnotations(
                read_only_hint=d.read_only, destructive_hint=not d.read_only, open_world_hint=open_world
            ),
        )


def _guarded(fn: Callable[..., Result]) -> Callable[..., CallToolResult]:
    """``fn`` answering a tool result: its JSON, or a tool error whose text is the CLI's one-line message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
        try:
            return _ok(fn(*args, **kwargs))
        except GGUFError as e:
            return _fail(e.one_line())
        except InputError as e:
            return _fail(f"{e.param}: {e}" if e.param else str(e))
        except AccessError as e:
            return _fail(str(e))
        except Exception as e:  # never take the server down
            return _fail(f"internal error: {type(e).__name__}: {e}")

    del wrapper.__wrapped__  # the SDK must see the wrapper's signature: CallToolResult, not dict
    signature = inspect.signature(fn).replace(return_annotation=CallToolResult)
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**fn.__annotations__, "return": CallToolResult}
    return wrapper


def _ok(d: Result) -> CallToolResult:
    """The JSON text of ``d``, also as structured content."""
    text = dumps(d)
    try:
        structured = json.loads(text) if isinstance(d, dict) else {"result": json.loads(text)}
    except ValueError:  # pragma: no cover - dumps always writes JSON
        structured = None
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _fail(message: str) -> CallToolResult:
    """A tool error whose text is ``message``."""
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)
