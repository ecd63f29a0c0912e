"""DeepCache for the Stable Diffusion web UIs.

* :mod:`lib_deepcache.engine`: the host-free engine (params, schedule, step clock, cache, UNet
  layouts, the session);
* :mod:`lib_deepcache.hosts`: the AUTOMATIC1111, Forge and SD.Next adapters and what they share;
* :mod:`lib_deepcache.bench`: ``python -m lib_deepcache.bench`` and its tools.

The engine's public names are re-exported here: ``from lib_deepcache import DeepCacheSession``.
"""

from .engine import (
    DeepCacheParamError,
    DeepCacheParams,
    DeepCacheSession,
    DeepCacheStats,
    SessionConflictError,
    UnsupportedUNetError,
)

__all__ = [
    "DeepCacheParamError",
    "DeepCacheParams",
    "DeepCacheSession",
    "DeepCacheStats",
    "SessionConflictError",
    "UnsupportedUNetError",
]
