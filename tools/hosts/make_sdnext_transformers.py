"""Write small seeded random Flux, SD3 and Chroma pipelines for the offline SD.Next host.

    VENV/bin/python make_sdnext_transformers.py SDNEXT_DIR OUT_DIR [--seed 0] [--only NAME]

``SDNEXT_DIR`` is SD.Next's source folder (its ``configs/flux``, ``configs/sd3`` and
``configs/chroma`` are read); ``OUT_DIR`` (SD.Next's ``models/Diffusers``) receives one diffusers
folder per model, ``tiny-flux``, ``tiny-sd3`` and ``tiny-chroma``, which SD.Next lists as
``Diffusers/tiny-flux`` etc. and loads with its own Flux, SD3 and Chroma loaders, offline.

Why: DeepCache's transformer path on SD.Next (a pipeline whose denoiser is
``sd_model.transformer``) can only be exercised end to end on the real host with such a model,
and the real ones (12-24 GB) neither download offline nor run on two CPU cores.

Every config is SD.Next's own (the files it ships for these families) with only sizes changed;
tokenizers, the scheduler config and ``model_index.json`` are copied from there byte for byte:

* transformers at width 32 (2 heads of 16; Flux and Chroma rotary axes 4 + 6 + 6 = 16):
  Flux 2 double-stream + 4 single-stream blocks, SD3 6 joint blocks, Chroma 2 + 4 (its
  modulation approximator 2 layers of 32), enough blocks for DeepCache's depth to matter;
* text encoders: CLIP text models of width 32 (2 layers; SD3's two give a 64-wide pooled
  vector), T5 encoders of 2 layers whose width equals what the transformer reads (Flux and
  Chroma 32, the CLIPs' width; SD3 64, the two CLIPs side by side, as 768 + 1280 <= 4096 in the
  real model). The CLIPs' final LayerNorm bias is non-zero: with a zero bias every token's
  output has mean 0, and SD.Next's emphasis rescale divides 0 by 0;
* VAE: a 16-channel ``AutoencoderKL`` with ``block_out_channels`` (8, 16, 16, 16), so 64x64
  pixels give an 8x8x16 latent (Flux and Chroma pack it into 16 tokens, SD3 patchifies it into
  16 tokens).

Each component is drawn under its own seed, so the same seed writes the same bytes on every
build. SD.Next must load them with the setting ``te_shared_te`` off (otherwise it fetches a
shared T5 from the Hub); the e2e harness sets it per request.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

WIDTH = 32  # transformer width and CLIP width
HEADS, HEAD_DIM = 2, 16
ROPE_AXES = [4, 6, 6]  # Flux/Chroma rotary axes, summing to HEAD_DIM
VAE = {
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
CLIP = {
    "hidden_size": WIDTH,
    "intermediate_size": 2 * WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": WIDTH,
}
# per model: the SD.Next config folder, the transformer's sizes, the T5's width, the components
MODELS: dict[str, dict[str, Any]] = {
    "tiny-flux": {
        "family": "flux",
        "transformer": {
            "num_layers": 2,
            "num_single_layers": 4,
            "joint_attention_dim": WIDTH,
            "pooled_projection_dim": WIDTH,
            "axes_dims_rope": ROPE_AXES,
        },
        "t5_width": WIDTH,
    },
    "tiny-sd3": {
        "family": "sd3",
        "transformer": {
            "num_layers": 6,
            "sample_size": 8,
            "pos_embed_max_size": 32,  # up to 512x512 pixels
            "joint_attention_dim": 2 * WIDTH,
            "caption_projection_dim": HEADS * HEAD_DIM,
            "pooled_projection_dim": 2 * WIDTH,
        },
        "t5_width": 2 * WIDTH,
    },
    "tiny-chroma": {
        "family": "chroma",
        "transformer": {
            "num_layers": 2,
            "num_single_layers": 4,
            "joint_attention_dim": WIDTH,
            "axes_dims_rope": ROPE_AXES,
            "approximator_hidden_dim": WIDTH,
            "approximator_layers": 2,
        },
        "t5_width": WIDTH,
    },
}
COPIED = ("model_index.json", "scheduler", "tokenizer", "tokenizer_2", "tokenizer_3")


def raw_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def read_config(folder: Path) -> dict[str, Any]:
    """A config.json without the keys that record where the original was saved from."""
    config = raw_config(folder)
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def text_encoder(folder: Path, seed: int, t5_width: int) -> torch.nn.Module:
    """The text encoder of SD.Next's config ``folder`` at small sizes (CLIP or T5)."""
    config = read_config(folder)
    torch.manual_seed(seed)
    if config["model_type"] == "t5":
        config.update(d_model=t5_width, d_kv=8, d_ff=2 * t5_width, num_heads=t5_width // 8)
        config.update(num_layers=2, num_decoder_layers=2)
        return transformers.T5EncoderModel(transformers.T5Config(**config)).eval()
    config.update(CLIP)
    cls = getattr(transformers, raw_config(folder)["architectures"][0])
    model = cls(transformers.CLIPTextConfig(**config)).eval()
    with torch.no_grad():  # non-zero final LayerNorm bias (see the module docstring)
        norm = getattr(model, "text_model", model).final_layer_norm
        norm.bias.copy_(0.1 + 0.05 * torch.randn_like(norm.bias))
    return model


def transformer(folder: Path, seed: int, sizes: dict[str, Any]) -> torch.nn.Module:
    config = read_config(folder)
    cls = getattr(diffusers, raw_config(folder)["_class_name"])
    config.update(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, **sizes)
    known = set(inspect.signature(cls.__init__).parameters)
    torch.manual_seed(seed)
    return cls(**{k: v for k, v in config.items() if k in known}).eval()


def vae(folder: Path, seed: int) -> torch.nn.Module:
    config = read_config(folder)
    config.update(VAE)
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(**config).eval()


def components(family_dir: Path, spec: dict[str, Any], seed: int) -> dict[str, torch.nn.Module]:
    """Every weighted component named in the family's model_index.json, drawn under seeds
    ``seed``, ``seed + 1``, ... in a fixed order."""
    index = json.loads((family_dir / "model_index.json").read_text())
    made: dict[str, torch.nn.Module] = {}
    for offset, name in enumerate(sorted(index)):
        if name.startswith("text_encoder"):
            made[name] = text_encoder(family_dir / name, seed + offset, spec["t5_width"])
        elif name == "transformer":
            made[name] = transformer(family_dir / name, seed + offset, spec["transformer"])
        elif name == "vae":
            made[name] = vae(family_dir / name, seed + offset)
    return made


def write_model(sdnext: Path, out: Path, name: str, seed: int) -> str:
    """Write one model folder (atomically: a temporary folder renamed into place); returns a
    one-line summary with its parameter counts and a digest of every file it holds."""
    spec = MODELS[name]
    family_dir = sdnext / "configs" / spec["family"]
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in COPIED:
        source = family_dir / item
        if source.is_dir():
            shutil.copytree(source, tmp / item)
        elif source.is_file():
            shutil.copy2(source, tmp / item)
    counts = {}
    for component, module in components(family_dir, spec, seed).items():
        module.save_pretrained(tmp / component, safe_serialization=True)
        counts[component] = sum(p.numel() for p in module.parameters())
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return f"{name}: {counts} sha256 {folder_digest(final)}"


def folder_digest(folder: Path) -> str:
    """One digest over every file's relative path and bytes, to compare builds."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdnext_dir", type=Path, help="SD.Next's source folder (has configs/)")
    parser.add_argument("out_dir", type=Path, help="SD.Next's models/Diffusers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(MODELS), action="append")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.only or sorted(MODELS):
        print(write_model(args.sdnext_dir, args.out_dir, name, args.seed), flush=True)


if __name__ == "__main__":
    main()
