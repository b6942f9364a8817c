"""Compatibility name for :mod:`ggufx.io.remote`: ``RemoteConfig`` and ``new_config`` (options passed
to ``ggufx.open(..., remote=cfg)``), ``CONFIG`` (the default where none is passed), ``STATS`` (every
request of the process) and ``stats_of`` (the requests made with one config)."""

from ggufx.io.remote import CONFIG, STATS, RemoteConfig, new_config, stats_of

__all__ = ["CONFIG", "STATS", "RemoteConfig", "new_config", "stats_of"]
