"""llama.cpp's template parser (``common/jinja/lexer.cpp``, ``parser.cpp``), as a check on jinja2's.

Templates are parsed by jinja2 (with ``trim_blocks``/``lstrip_blocks``, which llama.cpp's lexer
applies too, and ``{% generation %}`` kept in place as llama.cpp ignores it), then refused, as a
syntax error with the line, where llama.cpp's lexer or parser has no rule: ``{% with %}``,
``{% include %}``, ``**``, ``//``, recursive loops, string escapes it does not know...
"""

from __future__ import annotations

from typing import Any

from ggufx.errors import RenderError

# llama.cpp's own names of what it has no rule for; jinja2 parses them
UNSUPPORTED_NODES = {
    "With": "{% with %}",
    "Include": "{% include %}",
    "Import": "{% import %}",
    "FromImport": "{% from ... import %}",
    "Extends": "{% extends %}",
    "Block": "{% block %}",
    "ExprStmt": "{% do %}",
    "Pow": "the ** operator",
    "FloorDiv": "the // operator",
    "OverlayScope": "{% overlay %}",
    "EvalContextModifier": "{% autoescape %}",
    "ScopedEvalContextModifier": "{% autoescape %}",
}


class Program:
    """A parsed template: jinja2's syntax tree, checked against what llama.cpp's parser accepts."""

    __slots__ = ("source", "tree")

    def __init__(self, source: str, tree: Any) -> None:
        self.source = source
        self.tree = tree


_ENV: Any = None


def _parser() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2
        import jinja2.ext

        class GenerationTag(jinja2.ext.Extension):
            # llama.cpp ignores {% generation %} and {% endgeneration %}: the body stays in place
            tags = {"generation"}

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return jinja2.nodes.Scope(body).set_lineno(lineno)

        _ENV = jinja2.Environment(
            trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
        )
    return _ENV


_ESCAPES = set("ntrbfv\\'\"")


def _check_supported(env: Any, source: str, tree: Any) -> None:
    """Refuse, as a syntax error, what jinja2 parses but llama.cpp's lexer or parser rejects."""
    import jinja2.nodes as n

    for node in tree.find_all(n.Node):
        kind = type(node).__name__
        what = UNSUPPORTED_NODES.get(kind)
        if kind == "For" and node.recursive:
            what = "recursive loops"
        elif kind == "AssignBlock" and node.filter is not None:
            what = "a filter on {% set %} blocks"
        elif kind in ("Call", "Filter", "Test") and node.dyn_kwargs is not None:
            what = "**kwargs in calls"
        if what:
            raise RenderError("syntax", f"llama.cpp's template parser has no rule for {what}", node.lineno)
    for lineno, token, value in env.lex(source):
        if token == "string":
            body = value[1:-1]
            i = body.find("\\")
            while i >= 0:
                c = body[i + 1 : i + 2]
                if c not in _ESCAPES or not c:
                    raise RenderError(
                        "syntax",
                        f"llama.cpp's lexer has no escape \\{c} (only \\n \\t \\r \\b \\f \\v \\\\ \\' \\\")",
                        lineno,
                    )
                i = body.find("\\", i + 2)


def parse(source: str) -> Program:
    """Parse ``source`` as llama.cpp would accept it (RenderError ``syntax`` with the line if not)."""
    import jinja2

    env = _parser()
    try:
        tree = env.parse(source)
        _check_supported(env, source, tree)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError("syntax", f"syntax error: {e.message}", e.lineno) from None
    except RecursionError:
        raise RenderError("too-large", "the template is nested too deeply") from None
    return Program(source, tree)
