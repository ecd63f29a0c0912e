"""SD.Next (diffusers backend) as the extension sees it: ``shared.sd_model`` is a diffusers
pipeline whose ``unet`` is a ``UNet2DConditionModel``; scripts run once per batch around
``process_diffusers``, which calls the pipeline for the base pass and again, with
``p.is_hr_pass`` set, for the hires pass (modules/processing.py, processing_diffusers.py). No
``process_before_every_sampling``. The pipeline loop follows diffusers' StableDiffusion(Img2Img)
pipelines: ``set_timesteps``, img2img's ``t_start`` / ``set_begin_index``, batched CFG,
``scheduler.step``; the UNet and scheduler are real diffusers classes.
"""

import torch
from diffusers import DDIMScheduler

from lib_deepcache.bench.archs import build_diffusers_unet
from modules import processing


class DiffusersPipeline:
    def __init__(self, width=32, seed=0):
        self.unet = build_diffusers_unet("sd15", width=width, seed=seed)
        self.scheduler = DDIMScheduler(num_train_timesteps=1000)
        self.context_dim = self.unet.config.cross_attention_dim

    @torch.no_grad()
    def __call__(
        self,
        latents,
        prompt_embeds,
        negative_prompt_embeds,
        num_inference_steps,
        guidance_scale=7.0,
        strength=None,
        noise=None,
    ):
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
        if strength is not None:
            init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
            t_start = max(num_inference_steps - init_timestep, 0)
            timesteps = scheduler.timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
            latents = scheduler.add_noise(latents, noise, timesteps[:1])
        context = torch.cat([negative_prompt_embeds, prompt_embeds])
        for t in timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps = self.unet(model_input, t, encoder_hidden_states=context).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents


class SdnextTxt2Img(processing.Txt2Img):
    hr_denoising_strength = 0.5
    is_refiner_pass = False

    def sample(self, conditioning, unconditional_conditioning):
        pipe = self.sd_model
        x = self.rng(self.latent_shape())
        samples = pipe(x, conditioning, unconditional_conditioning, self.steps, self.cfg_scale)
        if not self.enable_hr:
            return samples
        self.is_hr_pass = True
        try:
            samples = torch.nn.functional.interpolate(samples, scale_factor=self.hr_scale)
            noise = self.rng(samples.shape, offset=1)
            steps = self.hr_second_pass_steps or self.steps
            return pipe(
                samples,
                conditioning,
                unconditional_conditioning,
                steps,
                self.cfg_scale,
                strength=self.hr_denoising_strength,
                noise=noise,
            )
        finally:
            self.is_hr_pass = False
