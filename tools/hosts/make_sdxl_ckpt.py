"""Write a small random-weight checkpoint in the SDXL layout for the offline A1111 host.

    venv/bin/python make_sdxl_ckpt.py WEBUI_DIR OUT_DIR [--seed N] [--force]
        [--vae-approx-dir DATA_DIR/models/VAE-approx]

Run it with the host's venv and ``HF_HOME`` set to the host's offline cache (the first text
encoder's config and tokenizer come from ``a1111-offline/clip-text-tiny`` there); nothing is
downloaded. It writes ``tiny-sdxl-random.safetensors`` and ``tiny-sdxl-random.yaml`` into OUT_DIR:
A1111 builds a checkpoint from the ``.yaml`` beside it, so the small widths need no detection.

Why: DeepCache's SDXL path (a UNet of 3 levels, 9 input / 9 output blocks, so a requested depth
of up to 11 must be clamped to 8) can only be exercised end to end on a real host with an SDXL
model, and the real one (6.9 GB) is neither available offline nor usable on two CPU cores.
This keeps every part of A1111's SDXL code path (``sgm.models.diffusion.DiffusionEngine``, its
``GeneralConditioner`` with a transformers CLIP text model and an open_clip text tower, the
size/crop vector conditioning, the sgm UNet and VAE) at widths that generate 64x64 in seconds.

The config is the WebUI's own SDXL base config (``config_sdxl``:
``repositories/generative-models/configs/inference/sd_xl_base.yaml``) with only widths changed:

* UNet: ``model_channels`` 32, ``channel_mult`` [1, 2, 4] (SDXL's 3 levels), attention at the
  two deeper levels as in SDXL, ``transformer_depth`` [0, 1, 1] (level 0 has no attention in
  SDXL either), ``num_head_channels`` 16;
* text encoder 1 (cross-attention): the 12-layer, width-64 CLIP text model of the SD 1.x tiny
  checkpoint, its hidden state 11 as in SDXL;
* text encoder 2 (cross-attention + pooled vector): open_clip's ``ViT-S-32-alt`` text tower,
  the smallest config open_clip ships (width 256, 10 layers, 256-wide projection), created with
  ``pretrained=None`` exactly as A1111 creates it (its vision tower is dropped by sgm);
* so ``context_dim`` = 64 + 256 = 320 (the two hidden states are concatenated on the feature
  axis) and ``adm_in_channels`` = 256 + 6 * 256 = 1792 (the pooled text vector, then
  original size, crop corner and target size, two numbers each, embedded in 256 channels each);
* VAE: ``ch`` 32 (8x down-sampling kept, as in the SD 1.x tiny checkpoint).

Attention types are written as the CPU host runs them (no xformers): A1111's ``repair_config``
would make the same change at load time.

``--vae-approx-dir`` also writes ``vaeapprox-sdxl.pt`` there, seeded random weights in the
layout of A1111's ``sd_vae_approx.VAEApprox`` (latent channels 4). Why: with the default
settings (live previews on, method "Approx NN") every SDXL generation first loads that file and,
when it is missing, downloads it from GitHub; offline the request fails with HTTP 500
(``URLError``) before sampling. SD 1.x's ``model.pt`` ships with the WebUI; the SDXL one does
not. It only draws the live-preview thumbnails, never the result.

The weights are seeded and random but not degenerate. sgm zero-initialises the last conv or
projection of every residual block and spatial transformer and the UNet's output conv; left at
zero, the UNet would output 0 for every input, every image would be the same and a cache could
change nothing. Those layers are redrawn like their neighbours. The text encoders' final
LayerNorms get a non-zero bias: a zero-bias LayerNorm output has mean 0, and A1111's emphasis
step rescales an embedding by ``old_mean / new_mean`` (0/0 gives NaN images).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

NAME = "tiny-sdxl-random"
TEXT1_REPO = "a1111-offline/clip-text-tiny"  # in the host's offline HF cache (make_hf_cache.py)
TEXT1_WIDTH = 64
TEXT2_ARCH = "ViT-S-32-alt"
TEXT2_WIDTH = 256  # text width of ViT-S-32-alt: the cross-attention part
POOLED_WIDTH = 256  # its embed_dim (text_projection output): the vector part
SIZE_EMBEDDERS = 3  # original_size_as_tuple, crop_coords_top_left, target_size_as_tuple
SIZE_OUTDIM = 256  # per number, two numbers each
CHECKPOINT_PARTS = ("model.diffusion_model.", "conditioner.embedders.", "first_stage_model.")
VAE_APPROX_NAME = "vaeapprox-sdxl.pt"
# A1111's sd_vae_approx.VAEApprox(latent_channels=4): conv1..conv8 as (in, out, kernel)
VAE_APPROX_CONVS = (
    (4, 8, 7),
    (8, 16, 5),
    (16, 32, 3),
    (32, 64, 3),
    (64, 32, 3),
    (32, 16, 3),
    (16, 8, 3),
    (8, 3, 3),
)


def tiny_config(base: Any) -> Any:
    """The SDXL base config with small widths; everything else as A1111 would load it."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(base))
    params = cfg.model.params
    unet = params.network_config.params
    unet.model_channels = 32
    unet.channel_mult = [1, 2, 4]
    unet.attention_resolutions = [4, 2]
    unet.transformer_depth = [0, 1, 1]
    unet.num_head_channels = 16
    unet.context_dim = TEXT1_WIDTH + TEXT2_WIDTH
    unet.adm_in_channels = POOLED_WIDTH + SIZE_EMBEDDERS * 2 * SIZE_OUTDIM
    unet.use_checkpoint = False
    unet.spatial_transformer_attn_type = "softmax"

    embedders = params.conditioner_config.params.emb_models
    text1, text2 = embedders[0], embedders[1]
    assert text1.target.endswith("FrozenCLIPEmbedder"), text1.target
    assert text2.target.endswith("FrozenOpenCLIPEmbedder2"), text2.target
    text1.params.version = TEXT1_REPO
    text2.params.arch = TEXT2_ARCH
    text2.params.version = None  # no pretrained tag: A1111 passes pretrained=None anyway
    sizes = [e for e in embedders[2:] if e.target.endswith("ConcatTimestepEmbedderND")]
    assert len(sizes) == SIZE_EMBEDDERS and all(e.params.outdim == SIZE_OUTDIM for e in sizes)

    ddconfig = params.first_stage_config.params.ddconfig
    ddconfig.ch = 32
    ddconfig.attn_type = "vanilla"
    return cfg


def text_model_from_config(name: str, *args: Any, **kwargs: Any) -> Any:
    """Stand-in for ``CLIPTextModel.from_pretrained``: the config only, weights drawn here."""
    import transformers

    return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name))


def build(cfg: Any, seed: int) -> tuple[Any, int]:
    """Instantiate the DiffusionEngine with sgm, seeded; redraw the zero-initialised layers."""
    import torch
    import transformers
    from sgm.util import instantiate_from_config

    original = transformers.CLIPTextModel.from_pretrained
    transformers.CLIPTextModel.from_pretrained = text_model_from_config
    try:
        torch.manual_seed(seed)
        model = instantiate_from_config(cfg.model)
    finally:
        transformers.CLIPTextModel.from_pretrained = original

    gen = torch.Generator().manual_seed(seed + 1)
    redrawn = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear) or weight is None:
                continue
            if weight.any():
                continue
            # the bound of torch's default init (kaiming_uniform with a=sqrt(5)): 1/sqrt(fan_in)
            bound = 1.0 / math.sqrt(weight[0].numel())
            weight.copy_((torch.rand(weight.shape, generator=gen) * 2 - 1) * bound)
            redrawn += 1
        text1, text2 = model.conditioner.embedders[0], model.conditioner.embedders[1]
        for norm in (text1.transformer.text_model.final_layer_norm, text2.model.ln_final):
            norm.bias.copy_(0.25 + 0.5 * torch.randn(norm.bias.shape, generator=gen))
    return model, redrawn


def check(model: Any, cfg: Any) -> None:
    """Fail early, here rather than in the WebUI, when a width does not fit the others."""
    import torch

    unet = model.model.diffusion_model
    widths = cfg.model.params.network_config.params
    assert len(unet.input_blocks) == 9 and len(unet.output_blocks) == 9, "not SDXL's 9+9 blocks"
    text2 = model.conditioner.embedders[1].model
    assert text2.token_embedding.weight.shape[1] == TEXT2_WIDTH, text2.token_embedding.weight.shape
    assert text2.text_projection.shape[1] == POOLED_WIDTH, text2.text_projection.shape
    with torch.no_grad():
        batch = {
            "txt": ["a photo of a cat"],
            "original_size_as_tuple": torch.tensor([[64.0, 64.0]]),
            "crop_coords_top_left": torch.tensor([[0.0, 0.0]]),
            "target_size_as_tuple": torch.tensor([[64.0, 64.0]]),
        }
        for embedder in model.conditioner.embedders[:2]:
            embedder.device = "cpu"
        cond = model.conditioner(batch)
        assert cond["crossattn"].shape == (1, 77, widths.context_dim), cond["crossattn"].shape
        assert cond["vector"].shape == (1, widths.adm_in_channels), cond["vector"].shape
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = unet(x, torch.tensor([500.0]), context=cond["crossattn"], y=cond["vector"])
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0
        image = model.first_stage_model.decode(x)
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def save(model: Any, path: str) -> int:
    """Write the state dict as fp32 safetensors (atomically); return the parameter count.

    Only the three parts an SDXL checkpoint carries are written (``model.diffusion_model.``,
    ``conditioner.embedders.``, ``first_stage_model.``): the denoiser's ``sigmas`` buffer is
    recomputed from the config at load time, so it is left out as in released checkpoints.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for key, value in model.state_dict().items():
        if not key.startswith(CHECKPOINT_PARTS):
            continue
        value = value.detach()
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[key] = value.contiguous().clone()
    save_file(tensors, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)
    return sum(v.numel() for v in tensors.values() if v.is_floating_point())


def write_vae_approx(path: str, seed: int) -> None:
    """The live-preview decoder A1111 loads for SDXL (see the module docstring), seeded."""
    import torch

    torch.manual_seed(seed + 2)
    state = {}
    for i, (c_in, c_out, kernel) in enumerate(VAE_APPROX_CONVS, start=1):
        conv = torch.nn.Conv2d(c_in, c_out, (kernel, kernel))
        state[f"conv{i}.weight"] = conv.weight.detach().clone()
        state[f"conv{i}.bias"] = conv.bias.detach().clone()
    # the legacy (non-zip) format: A1111's safe unpickler (modules/safe.py) rejects the zip
    # entries that current torch writes (.format_version, .storage_alignment)
    torch.save(state, path + ".tmp", _use_new_zipfile_serialization=False)
    os.replace(path + ".tmp", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("webui", help="the WebUI folder (with repositories/generative-models)")
    ap.add_argument("outdir", help="where to write the checkpoint (models/Stable-diffusion)")
    ap.add_argument("--seed", type=int, default=20240101)
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    ap.add_argument(
        "--vae-approx-dir",
        help=f"also write {VAE_APPROX_NAME} (live previews) here: DATA_DIR/models/VAE-approx",
    )
    args = ap.parse_args()

    webui = os.path.abspath(args.webui)
    sgm_repo = os.path.join(webui, "repositories", "generative-models")
    sys.path.insert(0, sgm_repo)
    import torch
    from omegaconf import OmegaConf

    torch.set_grad_enabled(False)
    os.makedirs(args.outdir, exist_ok=True)
    if args.vae_approx_dir:
        os.makedirs(args.vae_approx_dir, exist_ok=True)
        approx = os.path.join(args.vae_approx_dir, VAE_APPROX_NAME)
        if os.path.exists(approx) and not args.force:
            print(f"exists, kept: {approx}")
        else:
            write_vae_approx(approx, args.seed)
            print(f"wrote {approx}")
    path = os.path.join(args.outdir, NAME + ".safetensors")
    yaml_path = os.path.join(args.outdir, NAME + ".yaml")
    if os.path.exists(path) and os.path.exists(yaml_path) and not args.force:
        print(f"exists, kept: {path}")
        return
    start = time.time()
    cfg = tiny_config(OmegaConf.load(os.path.join(sgm_repo, "configs/inference/sd_xl_base.yaml")))
    model, redrawn = build(cfg, args.seed)
    check(model, cfg)
    n_unet = sum(p.numel() for p in model.model.diffusion_model.parameters())
    # the yaml first: the checkpoint's presence is what marks the pair as complete
    OmegaConf.save(cfg, yaml_path)
    n_total = save(model, path)
    print(
        f"wrote {path}: {n_total / 1e6:.1f} M params (UNet {n_unet / 1e6:.2f} M), "
        f"{os.path.getsize(path) / 1e6:.0f} MB, {redrawn} zero-initialised layers redrawn, "
        f"{time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
