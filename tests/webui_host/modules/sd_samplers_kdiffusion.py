"""k-diffusion samplers the way the WebUI drives them, with its CFG denoiser."""

import k_diffusion
import torch

from modules import script_callbacks, shared
from modules.sd_samplers_common import setup_img2img_steps

SAMPLERS = {
    "Euler": "sample_euler",
    "Euler a": "sample_euler_ancestral",
    "Heun": "sample_heun",
    "DPM2": "sample_dpm_2",
    "DPM++ 2M": "sample_dpmpp_2m",
    "DPM++ SDE": "sample_dpmpp_sde",
}


def apply_refiner(denoiser, sigma):
    """Switch to the refiner once the sigma reaches ``p.refiner_switch_at`` of the schedule."""
    p = denoiser.p
    refiner = getattr(p, "refiner_model", None)
    if refiner is None or shared.sd_model is refiner:
        return
    if p.is_hr_pass and shared.opts.hires_fix_refiner_pass == "first pass":
        return
    sigmas = denoiser.inner_model.sigmas
    index = int(torch.argmin((sigmas - sigma.max()).abs()))
    completed_ratio = (999 - index) / 1000
    if completed_ratio <= p.refiner_switch_at:
        return
    p.extra_generation_params["Refiner"] = refiner.name
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    shared.sd_model = refiner
    denoiser.update_inner_model()


class InterruptedException(BaseException):
    """Raised inside sampling when the user presses Interrupt or Skip."""


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.p = None
        self.model_wrap = None
        self.step = 0

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = k_diffusion.external.CompVisDenoiser(shared.sd_model)
        return self.model_wrap

    def update_inner_model(self):
        self.model_wrap = None

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if shared.state.interrupted or shared.state.skipped:
            raise InterruptedException
        apply_refiner(self, sigma)
        batch = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        image_cond_in = None if image_cond is None else torch.cat([image_cond, image_cond])
        params = script_callbacks.CFGDenoiserParams(
            x_in,
            image_cond_in,
            sigma_in,
            shared.state.sampling_step,
            shared.state.sampling_steps,
            cond,
            uncond,
            self,
        )
        script_callbacks.cfg_denoiser_callback(params)
        x_in, sigma_in, image_cond_in = params.x, params.sigma, params.image_cond
        skip_uncond = (
            (self.step % 2 or shared.opts.s_min_uncond_all)
            and s_min_uncond > 0
            and float(sigma[0]) < s_min_uncond
        )
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]
            if image_cond_in is not None:
                image_cond_in = image_cond_in[:-batch]
        text = cond if skip_uncond else torch.cat([cond, uncond])

        def condition(c, ic):
            d = {"c_crossattn": [c]}
            if ic is not None:
                d["c_concat"] = [ic]
            return d

        if shared.opts.batch_cond_uncond or skip_uncond:
            out = self.inner_model(x_in, sigma_in, cond=condition(text, image_cond_in))
        else:
            ic = image_cond_in
            out = torch.cat(
                [
                    self.inner_model(
                        x_in[:batch],
                        sigma_in[:batch],
                        cond=condition(cond, None if ic is None else ic[:batch]),
                    ),
                    self.inner_model(
                        x_in[batch:],
                        sigma_in[batch:],
                        cond=condition(uncond, None if ic is None else ic[batch:]),
                    ),
                ]
            )
        self.step += 1
        if skip_uncond:
            return out
        c, u = out[:batch], out[batch:]
        return u + (c - u) * cond_scale


class KDiffusionSampler:
    def __init__(self, name, sd_model):
        self.funcname = SAMPLERS[name]
        self.func = getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiser(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps)

    def callback_state(self, d):
        shared.state.sampling_step = d["i"]
        self.last_latent = d["denoised"]

    def launch(self, p, x, sigmas, c, uc, image_conditioning):
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        shared.state.sampling_steps = len(sigmas) - 1
        shared.state.sampling_step = 0
        extra = {
            "cond": c,
            "uncond": uc,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": p.s_min_uncond,
            "image_cond": image_conditioning,
        }
        torch.manual_seed(p.seed + 100)  # SDE samplers draw from the global generator
        self.last_latent = x
        try:
            with torch.no_grad():
                return self.func(
                    self.model_wrap_cfg,
                    x,
                    sigmas,
                    extra_args=extra,
                    callback=self.callback_state,
                    disable=True,
                )
        except InterruptedException:
            return self.last_latent

    def sample(self, p, x, c, uc, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        return self.launch(p, x * sigmas[0], sigmas, c, uc, image_conditioning)

    def sample_img2img(self, p, x, noise, c, uc, steps=None, image_conditioning=None):
        steps, t_enc = setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        return self.launch(p, x + noise * sigma_sched[0], sigma_sched, c, uc, image_conditioning)


def create_sampler(name, model):
    return KDiffusionSampler(name, model)
