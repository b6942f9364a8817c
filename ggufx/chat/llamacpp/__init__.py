"""Render chat templates as llama.cpp does: its own Jinja engine (``common/jinja/``), not jinja2.

llama.cpp parses and runs templates with a C++ engine of its own. It is more lenient than jinja2 in
places and stricter in others, and a template that renders in transformers may fail in
llama-server, or the reverse. This package runs a template with llama.cpp's rules, written after
the pinned llama.cpp source and split as its ``common/jinja/`` is:

* :mod:`.value`    - values, function arguments and the rules all parts share (``value.h``,
  ``value.cpp``'s conversions, ``string.h``'s input marks);
* :mod:`.builtins` - the global functions, tests, filters and methods of each type (``value.cpp``'s
  built-ins);
* :mod:`.runtime`  - statements and expressions executed over a parsed template, with llama.cpp's
  scoping and bounds (``runtime.h``, ``runtime.cpp``);
* :mod:`.parser`   - jinja2's parser checked against what llama.cpp's lexer and parser accept
  (``lexer.cpp``, ``parser.cpp``);
* :mod:`.driver`   - the entry points: :func:`compile_program` (parse, cached), ``execute``,
  :func:`run_json` (what ``common/chat.cpp`` does with ``jinja::parse`` and ``jinja::runtime``);
* :mod:`.caps`     - the capability flags ``caps.cpp`` computes from usage statistics, and the
  inputs llama-server builds before it renders (``common/chat.cpp``);
* :mod:`.server`   - a running llama-server's ``/apply-template`` and ``/props`` (the ground truth).

Imports flow one way: value <- builtins <- runtime <- driver <- caps <- server, and the parser
depends on none of value, builtins or runtime. The engine's own exceptions (``JinjaError`` and its
subclasses, the loop signals) are in :mod:`ggufx.errors`; every failure leaves the engine as a
:class:`~ggufx.chat.render.RenderError`.

Only values made here reach a template: there is no Python attribute access at all (no
``__class__``, no methods of Python objects), and rendering is bounded like
:mod:`ggufx.chat.render`: wall time (checked as the template runs, and by the command's budget),
output size, the size of any string or list the template builds, and call depth.
"""

from ggufx.chat.llamacpp.driver import compile_program, run_json

__all__ = ["compile_program", "run_json"]
