"""DeepCache on a UNet's wrapped sites: skip the deep units, splice the stored deep feature into
the boundary unit, store a full pass's feature (see :mod:`.layout` for the units).

The :class:`~.planner.StepPlanner` decides what each pass does; this module carries it out in
the blocks the host's forward calls. Skipped sites return correctly shaped zeros, so a foreign
forward that still concatenates and adds residuals on skipped levels (ControlNet's) keeps
running, and so do its pops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .layout import Role, Site, UNetLayout
from .patches import Forward
from .planner import Mode, PassState, StepPlanner
from .shapes import OutputShapes, first_tensor, replace_first_tensor


class UNetSplicer:
    def __init__(self, layout: UNetLayout, depth: int, planner: StepPlanner) -> None:
        self.layout = layout
        self.depth = depth
        self.planner = planner
        self._pass: PassState | None = None

    def sites(self) -> Sequence[Site]:
        return self.layout.sites

    def reset(self) -> None:
        """A new UNet call (or the session detaching): no pass is under way."""
        self._pass = None

    def run(self, site: Site, previous: Forward, args: tuple, kwargs: dict) -> Any:
        if site.head and site.role is Role.INPUT and site.first == 0 and not site.group:
            self._pass = self.planner.begin_pass(first_tensor(args, kwargs))
        p = self._pass
        if p is None or p.mode is Mode.PASS_THROUGH:
            return previous(*args, **kwargs)

        layout, depth = self.layout, self.depth
        skipped = layout.site_skipped(site, depth)
        if p.mode is Mode.UNDECIDED and skipped:
            raise RuntimeError("DeepCache: a deep block ran before the adaptive decision")
        if p.mode is Mode.CACHED and skipped:
            shapes = p.entry.skipped_shapes.get(site.name)
            # a site the full pass never reached runs: its output only feeds skipped sites
            return previous(*args, **kwargs) if shapes is None else shapes.zeros()
        if site.group:
            out = previous(*args, **kwargs)
            if skipped and p.store and p.mode is Mode.FULL:
                p.skipped_shapes[site.name] = OutputShapes.of(out)
            return out

        if site.head and site.role is Role.OUTPUT and site.first == layout.boundary(depth):
            if p.mode is Mode.CACHED:
                joined = self._splice(p, first_tensor(args, kwargs))
                args, kwargs = replace_first_tensor(args, kwargs, joined)
            elif p.store:
                self._store(p, first_tensor(args, kwargs))

        out = previous(*args, **kwargs)
        if site.tail and site.role is Role.INPUT and site.first == depth:
            self.planner.on_skip(p, first_tensor((out,), {}))
        elif skipped and p.store and p.mode is Mode.FULL:
            p.skipped_shapes[site.name] = OutputShapes.of(out)
        if site.tail and site.role is Role.OUTPUT and site.first == layout.num_blocks - 1:
            self._pass = None
        return out

    def _splice(self, p: PassState, z: torch.Tensor) -> torch.Tensor:
        """Replace the deep half of the boundary block's input with the stored feature."""
        feature = self.planner.feature(p)
        skip = z[:, z.shape[1] - p.skip_channels :]
        if feature.shape[0] != skip.shape[0] or feature.shape[2:] != skip.shape[2:]:
            raise RuntimeError(
                f"DeepCache: cached feature {tuple(feature.shape)} does not fit skip"
                f" {tuple(skip.shape)}; another extension changed the UNet's shapes mid-pass"
            )
        return torch.cat([feature, skip], dim=1)

    def _store(self, p: PassState, z: torch.Tensor) -> None:
        self.planner.store(p, z[:, : z.shape[1] - p.skip_channels].detach().clone())
