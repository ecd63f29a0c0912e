"""The DeepCache engine: host-free, torch only.

A host builds :class:`DeepCacheParams` from its UI, API or infotext and wraps each sampling pass
in a :class:`DeepCacheSession` (or lets a :class:`GenerationRun` do so per pass). This package
imports no WebUI module, no host adapter and nothing of the benchmark.
"""

from .generation import GenerationRun, PassPlan
from .layout import UnsupportedUNetError
from .params import DeepCacheParamError, DeepCacheParams
from .report import DeepCacheStats
from .session import DeepCacheSession, SessionConflictError

__all__ = [
    "DeepCacheParamError",
    "DeepCacheParams",
    "DeepCacheSession",
    "DeepCacheStats",
    "GenerationRun",
    "PassPlan",
    "SessionConflictError",
    "UnsupportedUNetError",
]
