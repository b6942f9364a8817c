"""Metadata edits: transactions of Set/Delete/Rename, planned into a new header and written crash-safely.

``engine`` says what a change is (``Set``, ``Delete``, ``Rename``), plans the new header and chooses a
write strategy; ``safewrite`` does the writing (in place, insert-range, rewrite), each crash-safe through
the undo journal of :mod:`ggufx.io.journal`; :mod:`ggufx.io.faults` lets the tests kill it midway.
"""

from ggufx.edit.engine import Change, Delete, EditResult, Rename, Set, edit

__all__ = ["Set", "Delete", "Rename", "Change", "EditResult", "edit"]
