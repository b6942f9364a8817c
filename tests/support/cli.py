"""The in-process command line: one ``ggufx`` run as ``(exit_code, stdout, stderr)``."""

from __future__ import annotations

from collections.abc import Callable

from click.testing import CliRunner, Result


class CliResult(tuple):
    """One in-process ``ggufx`` run. It is the tuple ``(exit_code, stdout, stderr)``, so
    ``code, out, err = cli(...)`` works and two runs compare equal when all three are equal; click's
    Result stays behind it for ``output`` (stdout and stderr interleaved, as a terminal shows them),
    ``stdout_bytes`` and ``exception``."""

    def __new__(cls, result: Result) -> CliResult:
        self = super().__new__(cls, (result.exit_code, result.stdout, result.stderr))
        self.result = result
        return self

    @property
    def exit_code(self) -> int:
        return self[0]

    @property
    def stdout(self) -> str:
        return self[1]

    @property
    def stderr(self) -> str:
        return self[2]

    @property
    def output(self) -> str:
        return self.result.output

    @property
    def stdout_bytes(self) -> bytes:
        return self.result.stdout_bytes

    @property
    def exception(self) -> BaseException | None:
        return self.result.exception


CliRun = Callable[..., CliResult]


def run_cli(*args: str, env: dict[str, str] | None = None, catch_exceptions: bool = False) -> CliResult:
    """``ggufx ARGS`` in this process (what the ``cli`` fixture calls)."""
    from ggufx.cli import main

    return CliResult(CliRunner().invoke(main, list(args), env=env, catch_exceptions=catch_exceptions))
