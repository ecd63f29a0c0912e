"""Processing objects and ``process_images`` in the WebUI's call order (v1.10)."""

import copy
import json

import torch

from modules import shared
from modules.sd_samplers_kdiffusion import create_sampler


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(p):
    params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.seed,
        "Size": f"{p.width}x{p.height}",
    }
    if getattr(p, "denoising_strength", None) is not None and not isinstance(p, Txt2Img):
        params["Denoising strength"] = p.denoising_strength
    params.update(p.extra_generation_params)
    line = ", ".join(
        k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None
    )
    return f"{p.prompt}\n{line}"


class Processed:
    def __init__(self, p, samples, infotexts):
        self.samples = samples
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""


class Processing:
    sampler_name = "Euler"

    def __init__(
        self,
        sd_model=None,
        prompt="",
        steps=8,
        seed=0,
        width=128,
        height=128,
        cfg_scale=7.0,
        batch_size=1,
        n_iter=1,
        s_min_uncond=0.0,
        **kwargs,
    ):
        self.prompt = prompt
        self.steps = steps
        self.seed = seed
        self.width, self.height = width, height
        self.cfg_scale = cfg_scale
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.s_min_uncond = s_min_uncond
        self.extra_generation_params = {}
        self.is_hr_pass = False
        self.sampler = None
        self.scripts = None
        self.script_args = ()
        self.refiner_model = None
        self.refiner_switch_at = None
        self.is_api = False
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def rng(self, shape, offset=0):
        g = torch.Generator().manual_seed(self.seed + 1000 * self.iteration + offset)
        return torch.randn(shape, generator=g)

    def setup_conds(self):
        model = shared.sd_model
        g = torch.Generator().manual_seed(self.seed + 17)
        self.c = torch.randn(self.batch_size, 77, model.context_dim, generator=g)
        self.uc = torch.randn(self.batch_size, 77, model.context_dim, generator=g)

    def latent_shape(self, scale=1.0):
        return (self.batch_size, 4, int(self.height * scale) // 8, int(self.width * scale) // 8)

    def init(self):
        pass

    def close(self):
        self.sampler = None
        self.c = self.uc = None


class Txt2Img(Processing):
    enable_hr = False
    hr_scale = 2.0
    hr_second_pass_steps = 0
    denoising_strength = 0.5
    image_conditioning = None

    def sample(self, conditioning, unconditional_conditioning):
        self.sampler = create_sampler(self.sampler_name, shared.sd_model)
        x = self.rng(self.latent_shape())
        self.scripts.process_before_every_sampling(
            self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
        )
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        self.is_hr_pass = True
        try:
            self.sampler = create_sampler(self.sampler_name, shared.sd_model)
            samples = torch.nn.functional.interpolate(samples, scale_factor=self.hr_scale)
            noise = self.rng(samples.shape, offset=1)
            self.hr_c, self.hr_uc = self.c, self.uc
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(
                self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc
            )
            steps = self.hr_second_pass_steps or self.steps
            return self.sampler.sample_img2img(
                self, samples, noise, self.hr_c, self.hr_uc, steps=steps
            )
        finally:
            self.is_hr_pass = False


class Img2Img(Processing):
    """img2img; with ``image_mask`` and a 9-channel model it is inpainting."""

    denoising_strength = 0.75
    image_mask = None
    init_images = ()

    def init(self):
        self.sampler = create_sampler(self.sampler_name, shared.sd_model)
        g = torch.Generator().manual_seed(self.seed + 5)
        self.init_latent = torch.randn(self.latent_shape(), generator=g)
        self.image_conditioning = None
        if shared.sd_model.in_channels == 9:
            mask = torch.zeros(self.batch_size, 1, *self.init_latent.shape[2:])
            mask[..., : mask.shape[-2] // 2, :] = 1.0
            self.mask = mask
            self.image_conditioning = torch.cat([mask, self.init_latent * (1 - mask)], dim=1)

    def sample(self, conditioning, unconditional_conditioning):
        x = self.rng(self.latent_shape())
        self.scripts.process_before_every_sampling(
            self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
        )
        samples = self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.image_conditioning,
        )
        if self.image_conditioning is not None:
            samples = samples * self.mask + self.init_latent * (1 - self.mask)
        return samples


def process_images(p):
    p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p):
    p.scripts.process(p)
    p.init()
    infotexts, samples_all = [], []
    for n in range(p.n_iter):
        p.iteration = n
        p.scripts.before_process_batch(
            p, batch_number=n, prompts=[p.prompt], seeds=[p.seed], subseeds=[0]
        )
        p.scripts.process_batch(p, batch_number=n, prompts=[p.prompt], seeds=[p.seed], subseeds=[0])
        p.setup_conds()
        samples = p.sample(p.c, p.uc)
        p.scripts.postprocess_batch(p, samples, batch_number=n)
        infotexts.append(create_infotext(p))
        samples_all.append(samples)
    processed = Processed(p, samples_all, infotexts)
    p.scripts.postprocess(p, processed)
    return processed


def copy_for_cell(p):
    """What the X/Y/Z grid does per cell: a shallow copy of the processing object."""
    return copy.copy(p)
