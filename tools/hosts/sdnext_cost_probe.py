"""An SD.Next script for measurements only: what the transformer calls of a generation cost.

``tools/sdnext_cache_compare.py`` copies this file into a host's extensions (as
``deepcache-cost-probe/scripts/cost_probe.py``) for one measuring session and removes it after.
Asked for through ``alwayson_scripts`` (title "Cost probe", ``args`` ``["flops"]`` or
``["time"]``), it hooks the pipeline's transformer for the batch and writes
``Transformer cost: "<flops> flops, <seconds> s, <calls> calls"`` into the infotext:

* flops: the matrix-product FLOPs the transformer calls really computed, counted by torch's
  ``FlopCounterMode`` around each call (so whatever a cache skips inside the call, blocks or
  attention, is not counted); CPU attention gets torch's formula for GPU attention, as the
  counter has none for the CPU kernel;
* seconds: the wall time spent inside the transformer calls (``time`` mode only: counting slows
  the calls down).
"""

from __future__ import annotations

import time

import torch
from modules import scripts, shared
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)
    ),
}


class CostProbe(scripts.Script):
    def __init__(self) -> None:
        super().__init__()
        self._handles: list = []

    def title(self) -> str:
        return "Cost probe"

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def process_batch(self, p, *args, **kwargs) -> None:
        self._remove()
        mode = str(args[0]) if args else ""
        transformer = getattr(shared.sd_model, "transformer", None)
        if mode not in ("flops", "time") or not isinstance(transformer, torch.nn.Module):
            return
        self.flops, self.seconds, self.calls, self._depth = 0, 0.0, 0, 0
        self._counting = mode == "flops"
        self._handles = [
            transformer.register_forward_pre_hook(self._enter),
            transformer.register_forward_hook(self._exit, always_call=True),
        ]

    def _enter(self, module, args) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self.calls += 1
        self._counter = FlopCounterMode(display=False, custom_mapping=_FORMULAS)
        if self._counting:
            self._counter.__enter__()
        self._began = time.perf_counter()

    def _exit(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        self.seconds += time.perf_counter() - self._began
        if self._counting:
            self._counter.__exit__(None, None, None)
            self.flops += self._counter.get_total_flops()

    def postprocess_batch(self, p, *args, **kwargs) -> None:
        if self._handles:
            p.extra_generation_params["Transformer cost"] = (
                f"{self.flops} flops, {self.seconds:.4f} s, {self.calls} calls"
            )
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
