"""Record every patch applied to a module so that removing them is one loop.

Blocks are patched by shadowing ``forward`` on the instance. Another extension may do the same on
top of ours while we are active (ControlNet saves a block's ``forward`` once and wraps it). Then
our wrapper cannot be taken out of its chain without breaking it; it is left in place and the
session's closed state makes it a plain pass-through, and the fact is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger("deepcache")

_MISSING = object()

Forward = Callable[..., Any]
WrapperFactory = Callable[[Forward], Forward]


@dataclass
class _ForwardPatch:
    module: torch.nn.Module
    wrapper: Forward
    previous_instance_forward: Any


class PatchSet:
    def __init__(self) -> None:
        self._forwards: list[_ForwardPatch] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def wrap_forward(self, module: torch.nn.Module, make_wrapper: WrapperFactory) -> None:
        """Shadow ``module.forward`` with ``make_wrapper(current forward)``."""
        previous = module.__dict__.get("forward", _MISSING)
        wrapper = make_wrapper(module.forward)
        module.forward = wrapper
        self._forwards.append(_ForwardPatch(module, wrapper, previous))

    def add_handle(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def remove_all(self) -> int:
        """Undo in reverse order; returns how many wrappers had to stay (someone wrapped them)."""
        stuck = 0
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        for patch in reversed(self._forwards):
            if patch.module.__dict__.get("forward") is not patch.wrapper:
                stuck += 1
                logger.warning(
                    "DeepCache: %s.forward was wrapped again by another extension while DeepCache"
                    " was active; DeepCache's wrapper stays in that chain as a pass-through",
                    type(patch.module).__name__,
                )
                continue
            if patch.previous_instance_forward is _MISSING:
                del patch.module.forward
            else:
                patch.module.forward = patch.previous_instance_forward
        self._forwards.clear()
        return stuck
