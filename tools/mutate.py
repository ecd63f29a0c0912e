"""Seeded mutations of the engine: does the unit suite catch each one?

    .venv/bin/python tools/mutate.py            # all, then the score
    .venv/bin/python tools/mutate.py --list     # what each mutation breaks
    .venv/bin/python tools/mutate.py --only 3 7

Each mutation replaces one snippet of an engine module (it must occur exactly once), runs the
engine's unit tests with ``-x`` and puts the file back, whatever happened. A mutation the tests
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
ENGINE_TESTS = [
    "tests/engine/test_schedule.py",
    "tests/engine/test_clock.py",
    "tests/engine/test_params.py",
    "tests/engine/test_session.py",
    "tests/engine/test_sampling.py",
    "tests/engine/test_adaptive.py",
    "tests/engine/test_generation.py",
    "tests/engine/test_watcher.py", "tests/hosts/test_sdnext.py",
    "tests/engine/test_unet_ldm.py",
]


@dataclass(frozen=True)
class Mutation:
    path: str
    old: str
    new: str
    breaks: str


MUTATIONS = [
    Mutation(
        "lib_deepcache/engine/cache.py",
        "SHAPES_PER_SLOT = 4",
        "SHAPES_PER_SLOT = 1",
        "one feature per slot: NGMS's alternating batch misses on every cached step",
    ),
    Mutation(
        "lib_deepcache/engine/cache.py",
        "        if slot >= MAX_SLOTS:\n            return False\n",
        "",
        "the slot bound: memory grows with the calls per step",
    ),
    Mutation(
        "lib_deepcache/engine/cache.py",
        "if entry is None or entry.step < stored_since:",
        "if entry is None:",
        "the stale rule: a feature older than the last full step is served",
    ),
    Mutation(
        "lib_deepcache/session.py",
        "        if tick.restarted:\n            self._cache.clear()\n",
        "        if tick.restarted:\n",
        "a restart keeps the previous pass's features",
    ),
    Mutation(
        "lib_deepcache/session.py",
        "            self.stats.miss_passes += 1\n            self._count_pass(ran_full=True)",
        "            self.stats.miss_passes += 1\n            self._count_pass(ran_full=False)",
        "a miss counted as a cached step",
    ),
    Mutation(
        "lib_deepcache/session.py",
        "if self._adaptive and p.mode is _Mode.FULL and p.slot == 0:",
        "if self._adaptive and p.mode is _Mode.FULL:",
        "the adaptive reference read from the step's last slot, not its first",
    ),
    Mutation(
        "lib_deepcache/session.py",
        "            self._change_sum, self._cached_in_a_row = 0.0, 0",
        "            self._cached_in_a_row = 0",
        "the adaptive change not reset at a refresh",
    ),
    Mutation(
        "lib_deepcache/session.py",
        "return torch.cat([feature, skip], dim=1)",
        "return torch.cat([skip, feature], dim=1)",
        "the cached feature spliced after the skip instead of before",
    ),
    Mutation(
        "lib_deepcache/engine/schedule.py",
        "return offset % params.interval == 0",
        "return offset % params.interval == 1",
        "uniform refreshes shifted by one step",
    ),
    Mutation(
        "lib_deepcache/engine/schedule.py",
        "return range(max(0, first), min(total_steps, last))",
        "return range(max(0, first), min(total_steps, last + 1))",
        "the window's end included",
    ),
    Mutation(
        "lib_deepcache/engine/clock.py",
        "restarted = not first and timestep > self._current",
        "restarted = False",
        "a rising timestep not seen as a new pass",
    ),
    Mutation(
        "lib_deepcache/engine/clock.py",
        "if index is None and not (first or restarted):",
        "if False:",
        "a midpoint evaluation taken for a new step",
    ),
    Mutation(
        "lib_deepcache/engine/clock.py",
        "GRID_SLACK = 0.02",
        "GRID_SLACK = 0.0",
        "a refiner's slightly shifted timesteps restart the step count",
    ),
    Mutation(
        "lib_deepcache/engine/params.py",
        "return max(0, min(depth, num_blocks - 1))",
        "return max(0, depth)",
        "depth not clamped to the UNet (SDXL has 9 blocks)",
    ),
    Mutation(
        "lib_deepcache/engine/generation.py",
        "if session.unet is unet and model_id == self._model_id:",
        "if session.unet is unet:",
        "a refiner loaded into the same UNet object keeps the base's features",
    ),
    Mutation(
        "lib_deepcache/hosts/sdnext.py",
        "grid = timesteps[begin::order]",
        "grid = timesteps[begin:]",
        "order-2 diffusers schedulers counted per evaluation",
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
        hit, seconds, first = run(mutation, ENGINE_TESTS)
        caught += hit
        verdict = "caught" if hit else "SURVIVED"
        print(f"{i:2d}  {verdict:8s} {seconds:5.0f} s  {mutation.breaks}  {first}", flush=True)
    print(f"score: {caught} / {len(chosen)} mutations caught")


if __name__ == "__main__":
    main()
