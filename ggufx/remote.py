"""Compatibility name for :mod:`ggufx.io.remote` (``ggufx.remote.CONFIG``, ``ggufx.remote.STATS``)."""

from ggufx.io.remote import CONFIG, STATS, RemoteConfig

__all__ = ["CONFIG", "STATS", "RemoteConfig"]
