"""What ``ggufx info`` does once its options are read, without click: click's command (:mod:`ggufx.cli.inspect`)
and the fast start (:mod:`ggufx.cli._fast`) both call :func:`run`, so the answer has one path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ggufx.cli._process import EXIT_USAGE

if TYPE_CHECKING:
    from ggufx.errors import GGUFError
    from ggufx.model import GGUFModel


def run(
    files: Sequence[str],
    as_json: bool,
    tablefmt: str,
    open_many: Callable[[Sequence[str]], list[GGUFModel | GGUFError]],
    echo: Callable[..., None],
    server: Any = None,
) -> int:
    """Summarise ``files`` (a split model once, however many of its shards are named) through ``echo`` (click's
    signature), one object or a list with ``as_json``; ``server``: the llama-server ``--server`` asked (its facts go
    in the first summary); ``open_many``: each file's model, or its error in its place. The exit status: 2 where one of several files could not be read (each such file a line
    on stderr, the others summarised); a single file that cannot be read raises its ``GGUFError``."""
    from ggufx import results
    from ggufx.errors import GGUFError
    from ggufx.render.text import info_text

    out = []
    failed = False
    for i, model in enumerate(results.distinct_models(open_many(files))):
        if isinstance(model, GGUFError):
            if len(files) == 1:
                raise model
            echo(f"ggufx: error: {model.one_line()}", err=True)
            failed = True
            continue
        res = results.info(model)
        if server is not None and i == 0:
            res["server"] = server.to_dict()
        if as_json:
            out.append(res)
        else:
            if i:
                echo("")
            echo(info_text(res, tablefmt))
    if as_json:
        from ggufx.render.jsontext import dumps

        echo(dumps(out[0] if len(files) == 1 else out))
    return EXIT_USAGE if failed else 0
