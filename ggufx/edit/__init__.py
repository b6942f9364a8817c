"""Metadata edits: transactions of Set/Delete/Rename, planned into a new header and written crash-safely.

``ops`` says what a change is, ``engine`` plans and chooses a write strategy, ``safewrite`` does the
writing (journal, in-place, insert-range, rewrite) and ``faults`` lets the tests kill it midway.
"""

from ggufx.edit.engine import Change, Delete, EditResult, Rename, Set, edit

__all__ = ["Set", "Delete", "Rename", "Change", "EditResult", "edit"]
