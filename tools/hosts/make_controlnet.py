"""Write a random-weight ControlNet shaped for a given SD 1.x checkpoint (fixed seed).

    venv/bin/python make_controlnet.py CHECKPOINT OUT.safetensors [--seed N] [--force]
        [--check-forge WEBUI_DIR]

Run it with the host's venv (it needs torch); nothing is downloaded and no ControlNet code is
imported. Used by tools/hosts/a1111-extras.sh (sd-webui-controlnet beside the full-size
``sd15-random-fp16``: that extension builds every SD 1.x ControlNet at full width, so only a
full-width file fits it; the ``sd15`` in the name tells it the version) and
tools/hosts/forge-extras.sh (Forge's built-in ControlNet, which detects the configuration from
the weights, beside the small e2e checkpoint).

Only the checkpoint's safetensors header is read: a ControlNet is a trainable copy of the UNet's
encoder, so its ``time_embed``, ``input_blocks`` and ``middle_block`` take the key names and
shapes of the checkpoint's ``model.diffusion_model.*`` tensors of those parts, whatever the
UNet's width. On top of them:

* ``input_hint_block``: eight 3x3 convolutions (indices 0, 2, ..., 14 of a sequential with a SiLU
  between each pair; channels 3, 16, 16, 32, 32, 96, 96, 256, then the UNet's base width) that
  take the RGB control image down to the latent size (the strides live in the loader's code);
* ``zero_convs.i.0``: a 1x1 convolution on the output of input block ``i``, as wide as it;
* ``middle_block_out.0``: a 1x1 convolution on the middle block's output.

All keys carry the ``control_model.`` prefix of the original ControlNet releases. A loader that
detects the ControlNet's configuration from its weights (Forge: ``huggingface_guess``) then
builds the same encoder as the checkpoint's UNet, so the residuals fit its skip connections.
Forge's offline e2e checkpoint ``sd15-random-small`` keeps 320 channels at every level:
its ControlNet has 336 tensors, 47.6 M parameters (95 MB in fp16). From a full-width SD 1.5
checkpoint it writes the 340 tensors and 361.3 M parameters of a real SD 1.5 ControlNet (the
four extra tensors: the 1x1 skip convolutions of the two ResBlocks that widen the channels).

Weights are drawn in sorted key order from one seeded generator, as PyTorch initialises the
layers (uniform in +-1/sqrt(fan_in) for convolutions and linear layers and their biases, ones
and zeros for the norms); the zero convolutions are drawn too, since a trained ControlNet's
start at zero and would change no image. The file is written with a sorted header, so the same
checkpoint and seed give the same bytes (and the same short hash in the model's name).

``--check-forge`` builds Forge's own ControlNet class (``backend.nn.cnets.cldm``, on the meta
device) from the configuration Forge's loader detects in the written weights and loads them with
``strict=True``: every key present, none left over, every shape right.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import time
from typing import Any

UNET_PREFIX = "model.diffusion_model."
PREFIX = "control_model."
ENCODER_PARTS = ("time_embed.", "input_blocks.", "middle_block.")
HINT_CHANNELS = 3  # an RGB control image
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # then the UNet's base width


def read_header(path: str) -> dict[str, Any]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape, offsets)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def encoder_shapes(checkpoint: str) -> dict[str, tuple[int, ...]]:
    """The checkpoint UNet's encoder (time embedding, input blocks, middle block) as shapes."""
    shapes = {
        key[len(UNET_PREFIX) :]: tuple(entry["shape"])
        for key, entry in read_header(checkpoint).items()
        if key.startswith(UNET_PREFIX) and key[len(UNET_PREFIX) :].startswith(ENCODER_PARTS)
    }
    if "input_blocks.0.0.weight" not in shapes:
        raise SystemExit(f"{checkpoint}: no {UNET_PREFIX}input_blocks.0.0.weight (not SD 1.x)")
    return shapes


def out_width(shapes: dict[str, tuple[int, ...]], part: str) -> int:
    """Channels a block outputs: those of its last layer (input conv, ResBlock, attention,
    Downsample)."""
    layers = {int(k[len(part) + 1 :].split(".")[0]) for k in shapes if k.startswith(part + ".")}
    for j in sorted(layers, reverse=True):
        for suffix in ("out_layers.3.weight", "proj_out.weight", "op.weight", "weight"):
            if f"{part}.{j}.{suffix}" in shapes:
                return shapes[f"{part}.{j}.{suffix}"][0]
    raise SystemExit(f"cannot tell the output width of {part}")


def controlnet_shapes(encoder: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every ControlNet tensor (without the prefix) and its shape."""
    shapes = dict(encoder)
    base = encoder["input_blocks.0.0.weight"][0]
    channels = HINT_CHANNELS
    for i, width in enumerate((*HINT_WIDTHS, base)):
        shapes[f"input_hint_block.{2 * i}.weight"] = (width, channels, 3, 3)
        shapes[f"input_hint_block.{2 * i}.bias"] = (width,)
        channels = width
    blocks = sorted({int(k.split(".")[1]) for k in encoder if k.startswith("input_blocks.")})
    if blocks != list(range(len(blocks))):
        raise SystemExit(f"input blocks are not numbered 0..n-1: {blocks}")
    for i in blocks:
        width = out_width(encoder, f"input_blocks.{i}")
        shapes[f"zero_convs.{i}.0.weight"] = (width, width, 1, 1)
        shapes[f"zero_convs.{i}.0.bias"] = (width,)
    middle = out_width(encoder, "middle_block")
    shapes["middle_block_out.0.weight"] = (middle, middle, 1, 1)
    shapes["middle_block_out.0.bias"] = (middle,)
    return shapes


def draw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Seeded float32 weights, drawn in sorted key order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        stem, _, kind = key.rpartition(".")
        weight = shapes.get(f"{stem}.weight")
        if weight is not None and len(weight) == 1:  # a norm: scale 1, shift 0
            out[key] = torch.ones(shape) if kind == "weight" else torch.zeros(shape)
            continue
        if weight is None or kind not in ("weight", "bias"):
            raise SystemExit(f"no fan-in for {key}")
        bound = 1.0 / math.sqrt(math.prod(weight[1:]))
        out[key] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
    return out


def write_safetensors(tensors: dict[str, Any], path: str, metadata: dict[str, str]) -> None:
    """A safetensors file with its header and data in sorted key order (reproducible bytes)."""
    import torch

    names = {torch.float16: "F16", torch.float32: "F32"}
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key in sorted(tensors):
        t = tensors[key]
        size = t.numel() * t.element_size()
        header[key] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in sorted(tensors):
            f.write(tensors[key].contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def check_forge(webui: str, tensors: dict[str, Any]) -> str:
    """Load the weights strictly into the ControlNet Forge's loader would build for them."""
    import torch

    webui = os.path.abspath(webui)
    for sub in ("packages_3rdparty", os.path.join("repositories", "huggingface_guess"), ""):
        sys.path.insert(0, os.path.join(webui, sub))
    argv, sys.argv = sys.argv, [sys.argv[0], "--always-cpu"]  # Forge's backend reads argv
    try:
        from backend.nn.cnets import cldm
        from huggingface_guess.detection import model_config_from_unet
    finally:
        sys.argv = argv
    model_config = model_config_from_unet(tensors, PREFIX, True)
    config = dict(model_config.unet_config)
    config.pop("out_channels")
    config["hint_channels"] = tensors[PREFIX + "input_hint_block.0.weight"].shape[1]
    with torch.device("meta"):
        net = cldm.ControlNet(**config)
    stripped = {k[len(PREFIX) :]: v for k, v in tensors.items()}
    net.load_state_dict(stripped, strict=True, assign=True)
    return (
        f"Forge detects {type(model_config).__name__}, channel_mult "
        f"{config['channel_mult']}, model_channels {config['model_channels']}; "
        f"strict load of {len(stripped)} tensors ok"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="an SD 1.x single-file checkpoint (.safetensors)")
    ap.add_argument("out", help="the ControlNet file to write (.safetensors)")
    ap.add_argument("--seed", type=int, default=20240515)
    ap.add_argument("--force", action="store_true", help="rewrite the file if it exists")
    ap.add_argument(
        "--check-forge",
        metavar="WEBUI_DIR",
        help="load it strictly into Forge's ControlNet class as Forge configures it",
    )
    args = ap.parse_args()
    if os.path.exists(args.out) and not args.force:
        print(f"exists, kept: {args.out}")
        return
    import torch

    t0 = time.time()
    shapes = controlnet_shapes(encoder_shapes(args.checkpoint))
    tensors = {PREFIX + k: v.to(torch.float16) for k, v in draw(shapes, args.seed).items()}
    if args.check_forge:
        print(check_forge(args.check_forge, tensors))
    source = re.sub(r"\.safetensors$", "", os.path.basename(args.checkpoint))
    metadata = {
        "format": "pt",
        "description": f"random weights, seed {args.seed}, "
        f"a ControlNet shaped for {source}; for offline tests only",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(tensors, args.out, metadata)
    n = sum(v.numel() for v in tensors.values())
    print(
        f"wrote {args.out}: {n / 1e6:.1f} M params, {len(tensors)} tensors, "
        f"{os.path.getsize(args.out) / 1e6:.0f} MB, {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
