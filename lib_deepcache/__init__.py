"""DeepCache for Stable Diffusion UNets: the host-agnostic engine.

Hosts build :class:`DeepCacheParams` from their UI/API/infotext and wrap each sampling pass in a
:class:`DeepCacheSession`; nothing else is needed from this package.
"""

from .layout import UnsupportedUNetError
from .params import DeepCacheParamError, DeepCacheParams
from .session import DeepCacheSession, DeepCacheStats, SessionConflictError

__all__ = [
    "DeepCacheParamError",
    "DeepCacheParams",
    "DeepCacheSession",
    "DeepCacheStats",
    "SessionConflictError",
    "UnsupportedUNetError",
]
