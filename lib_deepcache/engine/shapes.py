"""Shapes of what modules take and return, so a skipped module can hand back zeros of the right
form, a UNet call can be replayed on ``meta`` for FLOP counting, and its timestep read.

Blocks return a tensor (ldm), a tuple (a diffusers attention with ``return_dict=False``) or a
tensor plus a tuple of skips (a diffusers down block); torch's pytree utilities cover them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

_PREFERRED_NAMES = ("x", "hidden_states", "sample", "input_tensor", "h")


@dataclass(frozen=True)
class _TensorSpec:
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _spec_or_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorSpec(value.shape, value.dtype, value.device)
    return value


@dataclass(frozen=True)
class OutputShapes:
    """A module's output with every tensor replaced by its shape, dtype and device."""

    leaves: tuple[Any, ...]
    spec: pytree.TreeSpec

    @classmethod
    def of(cls, output: Any) -> OutputShapes:
        leaves, spec = pytree.tree_flatten(output)
        return cls(tuple(_spec_or_value(leaf) for leaf in leaves), spec)

    def zeros(self) -> Any:
        """The same structure with fresh zero tensors: real storage, since hosts add control
        residuals to them in place."""
        leaves = [
            torch.zeros(leaf.shape, dtype=leaf.dtype, device=leaf.device)
            if isinstance(leaf, _TensorSpec)
            else leaf
            for leaf in self.leaves
        ]
        return pytree.tree_unflatten(leaves, self.spec)


@dataclass(frozen=True)
class CallRecord:
    """The form of a UNet call (tensor shapes and dtypes, everything else as is)."""

    leaves: tuple[Any, ...]
    spec: pytree.TreeSpec

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> CallRecord:
        leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        return cls(tuple(_spec_or_value(leaf) for leaf in leaves), spec)

    @property
    def key(self) -> tuple[Any, ...]:
        """Hashable identity for memoising: tensor forms and the types of other values."""
        return (
            str(self.spec),
            tuple(
                (tuple(leaf.shape), str(leaf.dtype))
                if isinstance(leaf, _TensorSpec)
                else type(leaf).__name__
                for leaf in self.leaves
            ),
        )

    def on_meta(self) -> tuple[tuple, dict]:
        """Arguments of the same form with weightless ``meta`` tensors (fresh containers, so a
        UNet that writes into its options dict leaves the host's untouched)."""
        leaves = [
            torch.empty(leaf.shape, dtype=leaf.dtype, device="meta")
            if isinstance(leaf, _TensorSpec)
            else leaf
            for leaf in self.leaves
        ]
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return args, kwargs


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    """The tensor a block works on: its first positional argument, else its usual keyword."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    name = _tensor_keyword(kwargs)
    if name is None:
        leaves = [leaf for leaf in pytree.tree_leaves(args) if isinstance(leaf, torch.Tensor)]
        if not leaves:
            raise TypeError("DeepCache: a wrapped block was called without a tensor")
        return leaves[0]
    return kwargs[name]


def replace_first_tensor(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor):
        return (value, *args[1:]), kwargs
    name = _tensor_keyword(kwargs)
    if name is None:
        raise TypeError("DeepCache: cannot find the input tensor of the boundary block")
    return args, {**kwargs, name: value}


def _tensor_keyword(kwargs: dict) -> str | None:
    for name in _PREFERRED_NAMES:
        if isinstance(kwargs.get(name), torch.Tensor):
            return name
    return next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)


def read_timestep(args: tuple, kwargs: dict) -> float | None:
    """The timestep of a UNet call (ldm ``timesteps``, diffusers ``timestep``), if readable."""
    timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
    if isinstance(timesteps, (int, float)):
        return float(timesteps)
    if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0 or timesteps.is_meta:
        return None
    return float(timesteps.reshape(-1)[0].item())
