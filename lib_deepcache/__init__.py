"""DeepCache for Stable Diffusion UNets: the host-agnostic engine.

Hosts build :class:`DeepCacheParams` from their UI/API/infotext and wrap each sampling pass in a
:class:`DeepCacheSession`; nothing else is needed from this package.
"""

from .params import DeepCacheParamError, DeepCacheParams
from .session import DeepCacheSession, DeepCacheStats, SessionConflictError
from .unet_ldm import UnsupportedUNetError

__all__ = [
    "DeepCacheParamError",
    "DeepCacheParams",
    "DeepCacheSession",
    "DeepCacheStats",
    "SessionConflictError",
    "UnsupportedUNetError",
]
