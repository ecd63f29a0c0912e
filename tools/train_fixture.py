"""Train a fidelity fixture (lib_deepcache/bench/fixtures/photo_unet_*32px.safetensors) on the CPU.

    .venv/bin/python tools/train_fixture.py [--layout sd15|sdxl] [--iterations N] [--threads T]
        [--out FILE]

Data: random 32x32 crops of the colour and grey photographs in ``skimage.data`` (shipped inside
scikit-image, nothing downloaded), each image first shrunk by a random factor so that crops hold
shapes as well as texture; random horizontal flips. Objective: epsilon prediction under SD's
scaled-linear 1000-step schedule, uniform timesteps. AdamW with warm-up and cosine decay; the
saved weights are an exponential moving average, stored as float16. Everything is seeded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_deepcache.bench import fixture  # noqa: E402
from lib_deepcache.bench.harness import sd_alphas_cumprod  # noqa: E402

COLOUR = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "cat",
]
GREY = ["camera", "coins", "moon", "brick", "grass", "gravel"]
SEED = 1234


def photo_pyramid() -> list[torch.Tensor]:
    """Every photo at several scales, as float tensors in [-1, 1], (3, H, W)."""
    import skimage.data
    import skimage.transform

    images = []
    for name in COLOUR + GREY:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3].astype(np.float32) / 255.0
        for scale in (0.5, 0.25, 0.125):
            small = skimage.transform.rescale(image, scale, channel_axis=-1, anti_aliasing=True)
            if min(small.shape[:2]) >= fixture.IMAGE_SIZE:
                images.append(torch.from_numpy(small).permute(2, 0, 1) * 2 - 1)
    return images


def crops(images: list[torch.Tensor], batch: int, generator: torch.Generator) -> torch.Tensor:
    size = fixture.IMAGE_SIZE
    out = torch.empty(batch, 3, size, size)
    for i in range(batch):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - size + 1, (1,), generator=generator))
        crop = image[:, top : top + size, left : left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop
    return out


def train(iterations: int, batch: int, lr: float, out: Path, layout: str = "sd15") -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    images = photo_pyramid()
    unet = fixture.build(layout).train()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    alphas = sd_alphas_cumprod()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, iterations // 50)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, iterations - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    context = fixture.context(batch)
    start, running = time.time(), None
    for step in range(iterations):
        x0 = crops(images, batch, generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(xt, t, context=context), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == iterations - 1:
            print(f"step {step:5d}  loss {running:.4f}  {time.time() - start:6.0f} s", flush=True)
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in ema.items()}, str(out))
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layout", choices=sorted(fixture.LAYOUTS), default="sd15")
    parser.add_argument("--out", type=Path, default=None, help="default: the layout's fixture")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or fixture.LAYOUTS[args.layout][1]
    train(args.iterations, args.batch, args.lr, out, args.layout)


if __name__ == "__main__":
    main()
