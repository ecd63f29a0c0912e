"""Forge, and DeepCache through a ComfyUI-lineage UNet patcher (Forge's ``UnetPatcher``, ComfyUI's
``ModelPatcher``), using only the patcher's own API.

Such hosts hand each pass a patcher whose ``model_options`` reach every UNet evaluation; the
``model_function_wrapper`` option receives ``(apply_model, {"input", "timestep", "c",
"cond_or_uncond"})`` for each call. Ours attaches the session's block wrappers to the diffusion
model for exactly that call and chains to the wrapper that was there before (another
extension's), so the UNet module is untouched outside our calls and a patcher thrown away by the
host (Forge resets it before every pass) takes DeepCache with it. ControlNet's ``control`` dict
travels inside ``c``; the UNet's own loop still pops it once per block, skipped or not, so the
residuals stay aligned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.generation import GenerationRun
from ..engine.session import DeepCacheSession
from .base import HostAdapter
from .passes import ldm_pass_plan

WRAPPER_OPTION = "model_function_wrapper"

ModelFunction = Callable[..., Any]


class DeepCacheModelWrapper:
    """The ``model_function_wrapper`` DeepCache installs on a patcher clone."""

    def __init__(self, session: DeepCacheSession, previous: Callable[..., Any] | None) -> None:
        self.session = session
        self.previous = previous

    def __call__(self, apply_model: ModelFunction, args: dict[str, Any]) -> Any:
        if self.session.closed:  # the pass is over; a patcher kept beyond it samples uncached
            return self._call_through(apply_model, args)
        with self.session.attached():
            return self._call_through(apply_model, args)

    def _call_through(self, apply_model: ModelFunction, args: dict[str, Any]) -> Any:
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __deepcopy__(self, memo: dict[int, Any]) -> DeepCacheModelWrapper:
        # Patchers deep-copy their options on clone(); the session (and the UNet it holds)
        # must be shared by the clones, never copied.
        return self


def patch_unet_patcher(patcher: Any, session: DeepCacheSession) -> Any:
    """A clone of ``patcher`` whose UNet calls run under ``session``.

    A patcher that already carries a DeepCache wrapper (the host called the hook twice for one
    pass) gets it replaced, never stacked; the wrapper found under it is kept.
    """
    clone = patcher.clone()
    current = clone.model_options.get(WRAPPER_OPTION)
    previous = current.previous if isinstance(current, DeepCacheModelWrapper) else current
    clone.set_model_unet_function_wrapper(DeepCacheModelWrapper(session, previous))
    return clone


def diffusion_model_of(patcher: Any) -> Any:
    """The model a patcher evaluates (``patcher.model.diffusion_model``): a UNet, or Forge's
    Flux, Chroma or SD3 (MMDiT) transformer."""
    return patcher.model.diffusion_model


class Forge(HostAdapter):
    """Forge: per pass, a fresh clone of the UNet patcher carries the session; Forge drops the
    clone afterwards, and the session with it. Its refiner passes run on patchers of their own,
    so there is no model to follow mid-pass."""

    def on_sampling(self, run: GenerationRun, p: Any) -> None:
        forge_objects = p.sd_model.forge_objects
        patcher = forge_objects.unet
        plan = ldm_pass_plan(p, p.deepcache_args)
        session = run.begin_pass(diffusion_model_of(patcher), plan, attach=False)
        if session is not None:
            forge_objects.unet = patch_unet_patcher(patcher, session)
