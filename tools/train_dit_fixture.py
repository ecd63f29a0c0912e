"""Train the transformer fidelity fixture (lib_deepcache/bench/fixtures/photo_flux_32px.safetensors)
on the CPU.

    .venv/bin/python tools/train_dit_fixture.py [--iterations N] [--batch B] [--threads T]
        [--out FILE]

Data: the UNet fixture's (``train_fixture.photo_pyramid`` and ``crops``: random 32x32 crops of the
photographs in ``skimage.data``, random flips). Objective: Flux's rectified flow: for flow time
``s`` drawn logit-normal (``sigmoid`` of a standard normal, as SD3 and Flux train), ``x_s = (1 - s)
x0 + s noise`` and the model regresses the velocity ``noise - x0``. AdamW with warm-up and cosine
decay; the saved weights are an exponential moving average, stored as float16. Seeded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from train_fixture import SEED, crops, photo_pyramid  # noqa: E402

from lib_deepcache.bench import dit_fixture  # noqa: E402


def _schedule(iterations: int):
    warmup = max(1, iterations // 50)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, iterations - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def flow_loss(model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow velocity loss at logit-normal flow times."""
    s = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))
    noise = torch.randn(x0.shape, generator=generator)
    xs = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
    return torch.nn.functional.mse_loss(dit_fixture.velocity(model, xs, s), noise - x0)


def train(iterations: int, batch: int, lr: float, out: Path) -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    images = photo_pyramid()
    model = dit_fixture.build(SEED).train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(iterations))
    start, running = time.time(), None
    for step in range(iterations):
        loss = flow_loss(model, crops(images, batch, generator), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        # EMA horizon about a tenth of the run (a 0.999 cap would still hold early weights)
        decay = min(1 - 10 / iterations, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == iterations - 1:
            print(f"step {step:5d}  loss {running:.4f}  {time.time() - start:6.0f} s", flush=True)
        if step % 250 == 249:  # a usable checkpoint while a long run goes on
            _save(ema, out)
    _save(ema, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


def _save(ema: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in ema.items()}, str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=dit_fixture.WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args.iterations, args.batch, args.lr, args.out)


if __name__ == "__main__":
    main()
