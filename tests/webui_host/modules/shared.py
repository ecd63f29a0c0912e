"""Global state of the WebUI: the loaded model, user settings, progress state."""

from types import SimpleNamespace


class Options(SimpleNamespace):
    pass


def default_options() -> Options:
    return Options(
        img2img_fix_steps=False,
        batch_cond_uncond=True,
        s_min_uncond_all=False,
        enable_quantization=False,
        hires_fix_refiner_pass="second pass",
    )


opts = default_options()
state = SimpleNamespace(sampling_step=0, sampling_steps=0, interrupted=False, skipped=False)
sd_model = None
