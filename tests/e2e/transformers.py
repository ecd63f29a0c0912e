"""The transformer models of the SD.Next build and how the e2e tests load and drive them.

``tools/hosts/make_sdnext_transformers.py`` (run by ``tools/hosts/sdnext-extras.sh``) writes
small seeded diffusers Flux, SD3 and Chroma pipelines into SD.Next's ``models/Diffusers``.
SD.Next loads them with its own Flux, SD3 and Chroma loaders once its setting ``te_shared_te``
is off (on, it fetches a shared T5 from the Hub); :func:`use_model` sets both through the options
API, the harness's way, and :class:`ModelSwitch` puts back what it found.

Facts of this SD.Next build the scenarios rest on (seen in its log):

* "Euler" becomes "Euler FlowMatch" (``FlowMatchEulerDiscreteScheduler``, shift 3) on these models;
* img2img does not stretch the schedule for them: 12 steps at strength 0.5 run the last 6 (the
  UNet models run 12 of 25);
* the hires pass needs ``hr_force`` with a pixel upscaler: a latent upscaler fails on Flux's packed
  latents (HTTP 500 ``shape '[1, 8, 8, 16, 2, 2]' is invalid``) and inside Chroma's pipeline;
* Chroma calls its transformer twice a step (prompt, then negative prompt), SD3 once with both.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .build import HostError
from .hostctl import HostServer

MODELS = {
    "flux": "Diffusers/tiny-flux",
    "sd3": "Diffusers/tiny-sd3",
    "chroma": "Diffusers/tiny-chroma",
}
FAMILIES = tuple(MODELS)
# The deepest depth that still skips a block: 2 * depth blocks stay live. Flux and Chroma have
# 2 double-stream + 4 single-stream blocks, SD3 6 joint blocks: 6 blocks, depth 2 at most.
MAX_DEPTH = {"flux": 2, "sd3": 2, "chroma": 2}
# The pipeline class SD.Next runs for each family, first pass and hires/img2img pass.
PIPELINES = {
    "flux": ("FluxPipeline", "FluxImg2ImgPipeline"),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
    "chroma": ("ChromaPipeline", "ChromaImg2ImgPipeline"),
}


def options(host: HostServer) -> dict[str, Any]:
    status, body = host.get("/sdapi/v1/options")
    if status != 200 or not isinstance(body, dict):
        raise HostError(f"{host.name}: GET /sdapi/v1/options answered {status}: {body!r:.500}")
    return body


def use_model(host: HostServer, family: str) -> None:
    """Load the family's model (``te_shared_te`` off first: the setting is read at load)."""
    if options(host).get("sd_model_checkpoint") == MODELS[family]:
        return
    status, body = host.post(
        "/sdapi/v1/options", {"te_shared_te": False, "sd_model_checkpoint": MODELS[family]}
    )
    if status != 200 or options(host).get("sd_model_checkpoint") != MODELS[family]:
        raise HostError(f"{host.name}: could not load {MODELS[family]}: {status} {body!r:.500}")


class ModelSwitch:
    """Loads the families' models and puts back the checkpoint and ``te_shared_te`` it found
    before its first switch (a module fixture holds one; the server is started per test, so it
    is first asked from inside a test)."""

    def __init__(self) -> None:
        self.found: dict[str, Any] | None = None

    def use(self, host: HostServer, family: str) -> None:
        if self.found is None:
            self.found = options(host)
        use_model(host, family)

    def restore(self, host: HostServer) -> None:
        found, self.found = self.found, None
        if found is None:
            return
        with contextlib.suppress(HostError):  # a server that died has nothing to restore
            host.post(
                "/sdapi/v1/options",
                {
                    "sd_model_checkpoint": found.get("sd_model_checkpoint"),
                    "te_shared_te": found.get("te_shared_te", True),
                },
            )


def hires_pass(**fields: Any) -> dict[str, Any]:
    """Hires at 2x, 8 hires steps at strength 0.5 (4 executed), the way these models run it."""
    return {
        "enable_hr": True,
        "hr_force": True,
        "hr_upscaler": "Resize Nearest",
        "hr_resize_mode": 1,
        "hr_scale": 2,
        "hr_second_pass_steps": 8,
        "denoising_strength": 0.5,
        **fields,
    }
