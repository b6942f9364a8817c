"""What the commands import and the light stand-ins that keep heavy modules out of them (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.sax import saxutils

from hypothesis import given
from hypothesis import strategies as st

from ggufx.render import chart


@given(st.text(alphabet=st.sampled_from(list("ab&<>\"'\n\r\t é;#x"))))
def test_chart_escapes_as_saxutils_does(text: str) -> None:
    """The chart's escape and quoteattr write exactly what xml.sax.saxutils writes (which the chart
    no longer imports: it costs urllib.request, http.client, ssl and email)."""
    assert chart.escape(text) == saxutils.escape(text)
    assert chart.quoteattr(text) == saxutils.quoteattr(text)


def test_report_with_its_chart_imports_no_network_module(gemma_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = (
        "import sys\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main(['report', {str(gemma_path)!r}, '--gpus', '24GiB', '-o', {str(out)!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(','.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = set(proc.stderr.strip().splitlines()[-1].split(","))
    assert "ggufx.render.chart" in mods and "<svg" in out.read_text()
    assert not mods & {"http.client", "ssl", "urllib.request", "email", "xml.sax"}


def test_a_command_collects_cycles_less_often(tmp_path: Path) -> None:
    """The CLI raises the cyclic collector's first threshold while a command runs (the memory model's
    short-lived containers are freed by reference counting; collecting every 700 allocations cost 5
    to 10% of `report` and `mem --fit`), and never lowers one set higher."""
    from tests.support import FIXTURES

    code = (
        "import gc, sys\n"
        "gc.set_threshold(int(sys.argv[1]), 10, 10)\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main(['info', {str(FIXTURES / 'all-types-v3.gguf')!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(gc.get_threshold(), file=sys.stderr)\n"
    )
    for before, after in ((700, "(20000, 10, 10)"), (50_000, "(50000, 10, 10)")):
        proc = subprocess.run([sys.executable, "-c", code, str(before)], capture_output=True, text=True, check=True)
        assert proc.stderr.strip().splitlines()[-1] == after
