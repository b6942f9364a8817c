"""The layering contract of ARCHITECTURE.md, enforced: imports flow down only, no cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_layers_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_exceptions_live_in_errors_and_are_still_where_they_were() -> None:
    import ggufx.errors as errors
    from ggufx.analysis.policy import PolicyError
    from ggufx.chat.render import RenderError
    from ggufx.mcp.access import AccessError

    assert (PolicyError, RenderError, AccessError) == (errors.PolicyError, errors.RenderError, errors.AccessError)
    assert issubclass(PolicyError, errors.GGUFError)  # a bad policy is exit code 2, like a bad file
