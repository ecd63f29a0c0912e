"""Seeded mutations of the engine and the host adapters: does the unit suite catch each one?

    .venv/bin/python tools/mutate.py            # all, then the score
    .venv/bin/python tools/mutate.py --list     # what each mutation breaks
    .venv/bin/python tools/mutate.py --only 3 7

Each mutation replaces one snippet of an engine or host module (it must occur exactly once),
runs that package's unit tests (``tests/engine`` or ``tests/hosts``) with ``-x`` and puts the
file back, whatever happened. A mutation the tests
pass is a gap: a behaviour nothing checks. The list is hand-written from the bugs this project
has had and the rules its engine keeps; equivalent mutants (no observable change) are left
out. Runs on this machine's CPU in about a minute per mutation; not part of CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_TESTS = ["tests/engine"]
HOST_TESTS = ["tests/hosts"]
E = "lib_deepcache/engine/"
H = "lib_deepcache/hosts/"


@dataclass(frozen=True)
class Mutation:
    path: str
    old: str
    new: str
    breaks: str
    tests: tuple[str, ...] = tuple(ENGINE_TESTS)


MUTATIONS = [
    # ----------------------------------------------------------------- engine
    Mutation(
        E + "cache.py",
        "SHAPES_PER_SLOT = 4",
        "SHAPES_PER_SLOT = 1",
        "one feature per slot: NGMS's alternating batch misses on every cached step",
    ),
    Mutation(
        E + "cache.py",
        "        if slot >= MAX_SLOTS:\n            return False\n",
        "",
        "the slot bound: memory grows with the calls per step",
    ),
    Mutation(
        E + "cache.py",
        "if entry is None or entry.step < stored_since:",
        "if entry is None:",
        "the stale rule: a feature older than the last full step is served",
    ),
    Mutation(
        E + "planner.py",
        "        if tick.restarted:\n            self.clear()\n",
        "        if tick.restarted:\n",
        "a restart keeps the previous pass's features",
    ),
    Mutation(
        E + "planner.py",
        "                self.stats.miss_passes += 1\n            self._count_pass(ran_full=True)",
        "                self.stats.miss_passes += 1\n"
        "            self._count_pass(ran_full=self._step_is_full)",
        "a miss counted as a cached step",
    ),
    Mutation(
        E + "planner.py",
        "if self._adaptive and p.mode is Mode.FULL and p.slot == 0:",
        "if self._adaptive and p.mode is Mode.FULL:",
        "the adaptive reference read from the step's last slot, not its first",
    ),
    Mutation(
        E + "planner.py",
        "            self._change_sum, self._cached_in_a_row = 0.0, 0",
        "            self._cached_in_a_row = 0",
        "the adaptive change not reset at a refresh",
    ),
    Mutation(
        E + "planner.py",
        "self._cached_in_a_row >= self.params.max_cached",
        "self._cached_in_a_row > self.params.max_cached",
        "the adaptive schedule caches one step more than max cached in a row",
    ),
    Mutation(
        E + "session.py",
        "return torch.cat([feature, skip], dim=1)",
        "return torch.cat([skip, feature], dim=1)",
        "the cached feature spliced after the skip instead of before",
    ),
    Mutation(
        E + "session.py",
        "return previous(*args, **kwargs) if shapes is None else shapes.zeros()",
        "return previous(*args, **kwargs)",
        "a cached pass still runs the deep blocks (same image, no saving)",
    ),
    Mutation(
        E + "layout.py",
        "return self.num_blocks - 1 - depth",
        "return self.num_blocks - depth",
        "the feature spliced one output block too early",
    ),
    Mutation(
        E + "schedule.py",
        "return offset % params.interval == 0",
        "return offset % params.interval == 1",
        "uniform refreshes shifted by one step",
    ),
    Mutation(
        E + "schedule.py",
        "return range(max(0, first), min(total_steps, last))",
        "return range(max(0, first), min(total_steps, last + 1))",
        "the window's end included",
    ),
    Mutation(
        E + "clock.py",
        "restarted = not first and timestep > self._current",
        "restarted = False",
        "a rising timestep not seen as a new pass",
    ),
    Mutation(
        E + "clock.py",
        "if index is None and not (first or restarted):",
        "if False:",
        "a midpoint evaluation taken for a new step",
    ),
    Mutation(
        E + "clock.py",
        "GRID_SLACK = 0.02",
        "GRID_SLACK = 0.0",
        "a refiner's slightly shifted timesteps restart the step count",
    ),
    Mutation(
        E + "params.py",
        "return max(0, min(depth, num_blocks - 1))",
        "return max(0, depth)",
        "depth not clamped to the UNet (SDXL has 9 blocks)",
    ),
    Mutation(
        E + "generation.py",
        "if session.unet is unet and model_id == self._model_id:",
        "if session.unet is unet:",
        "a refiner loaded into the same UNet object keeps the base's features",
    ),
    Mutation(
        E + "generation.py",
        "            self.passes.pop()\n",
        "            pass\n",
        "a pass begun twice before it ran (Forge's hires) counted as two passes",
    ),
    Mutation(
        E + "watcher.py",
        "if not (tick.new_step and tick.step == 0):",
        "if not tick.new_step:",
        "every step of a pipeline pass taken for a new pass",
    ),
    Mutation(
        E + "report.py",
        "return self.cached_passes * (1.0 - self.shallow_share) / passes",
        "return self.cached_passes * self.shallow_share / passes",
        "the FLOP saving reported as the shallow share",
    ),
    Mutation(
        E + "forecast.py",
        "return torch.lerp(entry.feature, previous.feature, -ratio)",
        "return torch.lerp(entry.feature, previous.feature, ratio)",
        "the forecast extrapolates backwards",
    ),
    Mutation(
        E + "planner.py",
        "self.cache.put(p.slot, entry, keep_previous=self.params.forecast > 0)",
        "self.cache.put(p.slot, entry)",
        "the forecast never gets a second feature (silently plain DeepCache)",
    ),
    # ----------------------------------------------------------------- hosts
    Mutation(
        H + "sdnext.py",
        "grid = timesteps[begin::order]",
        "grid = timesteps[begin:]",
        "order-2 diffusers schedulers counted per evaluation",
        tuple(HOST_TESTS),
    ),
    Mutation(
        H + "sdnext.py",
        '    if getattr(p, "is_refiner_pass", False):\n        return None\n',
        "",
        "SD.Next's refiner pass cached",
        tuple(HOST_TESTS),
    ),
    Mutation(
        H + "passes.py",
        "        executed = t_enc + 1",
        "        executed = t_enc",
        "an img2img pass planned one step short",
        tuple(HOST_TESTS),
    ),
    Mutation(
        H + "controller.py",
        "            p.extra_generation_params.pop(key, None)",
        "            pass",
        "an X/Y/Z cell inherits the previous cell's DeepCache infotext",
        tuple(HOST_TESTS),
    ),
    Mutation(
        H + "controller.py",
        "        if parsed.enabled:\n            self._unhook_on_close(p)\n",
        "",
        "a generation that fails mid-sampling leaves the UNet hooked",
        tuple(HOST_TESTS),
    ),
]


def run(mutation: Mutation, tests: list[str]) -> tuple[bool, float, str]:
    """(caught, seconds, the first failing test) for one mutation; the file is restored."""
    path = ROOT / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.path}: the snippet to mutate is not there exactly once")
    began = time.monotonic()
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    return proc.returncode != 0, time.monotonic() - began, (failed[0] if failed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and stop")
    parser.add_argument("--only", type=int, nargs="+", help="run these (1-based) only")
    args = parser.parse_args()
    chosen = [(i, m) for i, m in enumerate(MUTATIONS, 1) if not args.only or i in args.only]
    if args.list:
        for i, mutation in chosen:
            print(f"{i:2d}  {mutation.path}: {mutation.breaks}")
        return
    caught = 0
    for i, mutation in chosen:
        hit, seconds, first = run(mutation, list(mutation.tests))
        caught += hit
        verdict = "caught" if hit else "SURVIVED"
        print(f"{i:2d}  {verdict:8s} {seconds:5.0f} s  {mutation.breaks}  {first}", flush=True)
    print(f"score: {caught} / {len(chosen)} mutations caught")


if __name__ == "__main__":
    main()
