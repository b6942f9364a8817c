"""What the editing commands (``set``, ``edit``, ``template set``) need from the layers below the
faces: a value type named on the command line, and the edits a template source makes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ggufx.errors import InputError

if TYPE_CHECKING:
    from ggufx.format.values import ValueType


def value_type(name: str, param: str = "--type") -> ValueType:
    """``u32``, ``str``, ``f32``... as ``--type`` takes them (:func:`ggufx.format.keys.parse_type`)."""
    from ggufx.format.keys import parse_type

    try:
        return parse_type(name)
    except ValueError as e:
        raise InputError(str(e), param) from None


def present_keys(path: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The ``keys`` the local GGUF at ``path`` has (``edit --delete KEY --missing-ok``)."""
    from ggufx.model import open_model

    metadata = open_model(path).metadata
    return tuple(k for k in keys if k in metadata)
