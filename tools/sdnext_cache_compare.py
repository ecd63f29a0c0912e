"""DeepCache against SD.Next's built-in transformer caches, side by side in the real SD.Next.

    .venv/bin/python tools/sdnext_cache_compare.py [--steps 20] [--size 128] [--seeds 4]
        [--repeats 5] [--markdown FILE] [--json FILE]

Same host, same models (the build's tiny Flux, SD3 and Chroma), same prompt and seeds: each
method's images against the uncached ones, and what the transformer calls cost. The host is the
e2e one (``DEEPCACHE_HOSTS_DIR``, ``DEEPCACHE_E2E_PORT_OFFSET`` as for ``pytest -m e2e``), with
this working tree installed and, for the session only, ``tools/hosts/sdnext_cost_probe.py``,
which counts the FLOPs the transformer calls computed (torch's ``FlopCounterMode`` inside each
call, so work a cache skips is not counted) and times them.

* FLOP speedup: the uncached generation's transformer FLOPs over the method's, summed over the
  seeds (exact, not a timing);
* time speedup: the median transformer time of ``--repeats`` uncached runs over the method's
  (one seed, one warm-up each). DeepCache's runs alternate with uncached ones; a built-in leaves
  its hooks on the transformer after it is switched off (SD.Next's ``set_cache`` returns early
  then), so its uncached runs come first, on a freshly loaded model, and its own after;
* distance: mean absolute difference to the uncached image in levels (0-255) and PSNR, averaged
  over the seeds.

Built-ins that cannot run say why (the host's error), with their images compared all the same.
TeaCache is read when the model loads (SD.Next patches the transformer class then) and stays
patched for the whole process, so it runs last, on a model loaded with it on.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.hostctl import HostServer, HostState  # noqa: E402
from tests.e2e.payloads import Result, base_payload, deepcache  # noqa: E402
from tests.e2e.transformers import FAMILIES, MODELS, use_model  # noqa: E402

PROBE = ROOT / "tools" / "hosts" / "sdnext_cost_probe.py"
PROBE_FOLDER = "deepcache-cost-probe"
DEFAULT_MODEL = "Diffusers/tiny-sd15"

# name -> (DeepCache args or None, SD.Next settings for the request)
OURS: dict[str, dict[str, Any]] = {
    "DeepCache auto, depth 0": {"interval": "auto"},
    "DeepCache interval 3, depth 0": {"interval": 3},
    "DeepCache interval 3, depth 0, forecast 1": {"interval": 3, "forecast": 1},
    "DeepCache interval 3, depth 1 (outermost pair live)": {"interval": 3, "depth": 1},
}
BUILT_INS: dict[str, dict[str, Any]] = {
    # Flux and Chroma have no negative batch: FasterCache's unconditional-branch skipping
    # needs one (HTTP 500 without "guidance distilled"), so only its attention skipping runs
    "FasterCache (guidance distilled)": {
        "faster_cache_enabled": True,
        "fc_guidance_distilled": True,
    },
    "PAB": {"pab_enabled": True},
    "FBCache (ParaAttention first-block cache)": {"para_cache_enabled": True},
    "Cache-DiT": {"cache_dit_enabled": True},
}
TEACACHE = "TeaCache (threshold 0.15)"
# logged at every generation by the live preview's 4-channel approximation on 16-channel latents
_LIVE_PREVIEW_ERROR = "VAE decode simple"


@dataclass
class Run:
    images: list[np.ndarray]
    flops: int
    seconds: float
    status: int
    error: str = ""
    counts: str = ""  # DeepCache's "DeepCache steps"


@dataclass
class Row:
    model: str
    method: str
    flop_speedup: float | None
    time_speedup: float | None
    mean_abs_diff: float | None
    psnr_db: float | None
    note: str = ""
    counts: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, host: HostServer, args: argparse.Namespace) -> None:
        self.host, self.args = host, args

    def generate(self, seed: int, mode: str, dc: dict | None, settings: dict) -> Run:
        scripts: dict[str, Any] = {"Cost probe": {"args": [mode]}}
        if dc is not None:
            scripts.update(deepcache(**dc))
        payload = base_payload(
            self.host,
            seed=seed,
            steps=self.args.steps,
            width=self.args.size,
            height=self.args.size,
            alwayson_scripts=scripts,
            override_settings=settings,
        )
        mark = self.host.log_mark()
        status, body = self.host.post("/sdapi/v1/txt2img", payload)
        result = Result.from_response(status, body, self.host.log_since(mark))
        if status != 200:
            return Run([], 0, 0.0, status, _error_line(body))
        fields = result.fields()
        flops, seconds = _cost(fields.get("Transformer cost", ""))
        errors = [
            line
            for line in result.log.splitlines()
            if " ERROR " in line and _LIVE_PREVIEW_ERROR not in line
        ]
        error = errors[0].split(" ERROR ", 1)[1].strip() if errors else ""
        return Run(result.images, flops, seconds, status, error, fields.get("DeepCache steps", ""))

    def runs(self, dc: dict | None, settings: dict) -> Run:
        """Every seed once, FLOPs counted: the images and the summed FLOPs."""
        runs = [self.generate(s, "flops", dc, settings) for s in self.seeds]
        failed = next((r for r in runs if r.status != 200), None)
        if failed is not None:
            return failed
        images = [r.images[0] for r in runs]
        return Run(images, sum(r.flops for r in runs), 0.0, 200, runs[0].error, runs[0].counts)

    def time_once(self, dc: dict | None, settings: dict) -> float:
        run = self.generate(self.seeds[0], "time", dc, settings)
        if run.status != 200 or run.seconds <= 0:
            raise RuntimeError(f"a timed run failed: HTTP {run.status} {run.error} {dc} {settings}")
        return run.seconds

    def times(self, dc: dict | None, settings: dict) -> list[float]:
        self.time_once(dc, settings)  # warm-up
        return [self.time_once(dc, settings) for _ in range(self.args.repeats)]

    @property
    def seeds(self) -> list[int]:
        return [1000 + i for i in range(self.args.seeds)]


def _cost(text: str) -> tuple[int, float]:
    parts = [p.split()[0] for p in text.split(",")]
    return (int(parts[0]), float(parts[1])) if len(parts) >= 2 else (0, 0.0)


def _error_line(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("errors") or body.get("detail") or body)[:160]
    return str(body)[:160]


def distance(images: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    diffs = [
        a.astype(np.float64) - b.astype(np.float64) for a, b in zip(images, reference, strict=True)
    ]
    mad = float(np.mean([np.abs(d).mean() for d in diffs]))
    mses = [float((d**2).mean()) for d in diffs]
    psnrs = [10 * math.log10(255**2 / mse) if mse > 0 else math.inf for mse in mses]
    return mad, float(np.mean(psnrs))


def reload(host: HostServer, family: str) -> None:
    """A freshly loaded model: no hook a built-in left on the transformer."""
    host.post("/sdapi/v1/options", {"sd_model_checkpoint": DEFAULT_MODEL})
    use_model(host, family)


def row(family: str, name: str, base: Run, run: Run, speed: float | None) -> Row:
    if run.status != 200:
        return Row(family, name, None, None, None, None, f"HTTP {run.status}: {run.error}")
    mad, psnr = distance(run.images, base.images)
    note = run.error
    if run.flops == base.flops and mad == 0:
        note = "no effect: the uncached image and FLOPs" + (f" ({note})" if note else "")
    counts = [run.counts] if run.counts else []
    return Row(family, name, base.flops / run.flops, speed, mad, psnr, note, counts)


def measure_family(bench: Bench, family: str) -> list[Row]:
    host = bench.host
    reload(host, family)
    base = bench.runs(None, {})
    rows = []
    for name, dc in OURS.items():
        dc = {"enabled": True, **dc}
        run = bench.runs(dc, {})
        bench.time_once(None, {}), bench.time_once(dc, {})  # warm-up
        plain, cached = [], []
        for _ in range(bench.args.repeats):  # alternating, one run each per round
            plain.append(bench.time_once(None, {}))
            cached.append(bench.time_once(dc, {}))
        rows.append(row(family, name, base, run, _ratio(plain, cached)))
    for name, settings in BUILT_INS.items():
        reload(host, family)
        # the uncached image of this load: a reload alone moves it (seen: 3.3 levels on Flux),
        # which would otherwise be charged to the built-in
        own_base = bench.runs(None, {})
        plain = bench.times(None, {})
        run = bench.runs(None, settings)
        cached = bench.times(None, settings) if run.status == 200 else []
        result = row(family, name, own_base, run, _ratio(plain, cached))
        moved, _ = distance(own_base.images, base.images)
        result.note = "; ".join(filter(None, [result.note, f"reload moved plain {moved:.2f}"]))
        rows.append(result)
    return rows


def measure_teacache(bench: Bench, family: str, base: Run) -> Row:
    host = bench.host
    host.post("/sdapi/v1/options", {"sd_model_checkpoint": DEFAULT_MODEL})
    host.post(
        "/sdapi/v1/options",
        {"te_shared_te": False, "teacache_enabled": True, "sd_model_checkpoint": MODELS[family]},
    )
    try:
        run = bench.runs(None, {})
        return row(family, TEACACHE, base, run, None)
    finally:
        host.post("/sdapi/v1/options", {"teacache_enabled": False})


def _ratio(plain: list[float], cached: list[float]) -> float | None:
    if not plain or not cached:
        return None
    return statistics.median(plain) / statistics.median(cached)


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"{args.steps} steps, {args.size}x{args.size}, seeds {args.seeds}, "
        f"{args.repeats} timed runs per method",
        "",
        "| model | method | FLOP speedup | time speedup | mean abs diff (levels) | PSNR (dB)"
        " | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_fmt(r.flop_speedup, "x"), _fmt(r.time_speedup, "x")]
        cells += [_fmt(r.mean_abs_diff, ""), _fmt(r.psnr_db, "")]
        note = "; ".join([*r.counts, r.note]).strip("; ")
        lines.append(f"| {r.model} | {r.method} | {' | '.join(cells)} | {note} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    host = HostServer("sdnext")
    host.ensure_built()
    probe = host.extensions_dir / PROBE_FOLDER / "scripts"
    probe.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROBE, probe / "cost_probe.py")
    try:
        host.ensure(HostState())  # the next start restores the build's settings
        rows = run_all(Bench(host, args), args.families)
    finally:
        host.stop()
        shutil.rmtree(probe.parent)
    text = markdown(rows, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def run_all(bench: Bench, families: list[str]) -> list[Row]:
    rows, bases = [], {}
    for family in families:
        rows += measure_family(bench, family)
        reload(bench.host, family)
        bases[family] = bench.runs(None, {})
    # TeaCache last: it patches the transformer class for the rest of the process
    for family in sorted(families, key=lambda f: f == "flux"):
        rows.append(measure_teacache(bench, family, bases[family]))
    return rows


if __name__ == "__main__":
    main()
