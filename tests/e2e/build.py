"""Build a host once per machine with ``tools/hosts/build.sh`` (cached per recipe there), never
twice at the same time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3 * 3600


class HostError(RuntimeError):
    """The host could not be built, started or reached; the message carries its log tail."""


def build_host(name: str, log_dir: Path | None = None) -> Path:
    """The host's built directory, building it first if needed.

    A build of the same host already running (started by hand or by another session) is
    waited for instead of started twice; a lock file serialises our own sessions.
    """
    # no dot in the path: gradio refuses (403) to serve page scripts from a hidden folder
    base = Path(os.environ.get("DEEPCACHE_HOSTS_DIR", Path.home() / "sd-webui-deepcache-hosts"))
    base.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or base
    log_dir.mkdir(parents=True, exist_ok=True)
    build_log = log_dir / f"build-{name}.log"
    with open(base / f".e2e-build-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while _build_running(name):
            if time.monotonic() > deadline:
                raise HostError(f"{name}: another build still runs after the timeout")
            time.sleep(10)
        with open(build_log, "ab") as stderr:
            proc = subprocess.run(
                ["bash", str(REPO_ROOT / "tools/hosts/build.sh"), name],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise HostError(
            f"{name}: build failed (exit {proc.returncode}); tail of {build_log}:\n"
            + tail(build_log)
        )
    target = Path(lines[-1])
    if not (target / "start.sh").is_file():
        raise HostError(f"{name}: build printed {target}, which has no start.sh")
    return target


def _build_running(name: str) -> list[int]:
    """Pids of a build of this host already running (a second one would corrupt its target)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for i, arg in enumerate(argv):
            if not arg.endswith("build.sh"):
                continue
            if arg.endswith(f"hosts/{name}/build.sh") or name in argv[i + 1 : i + 2]:
                pids.append(int(entry.name))
                break
    return pids


def tail(path: Path, chars: int = 6000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - chars))
        return handle.read().decode(errors="replace")
    return f"(no {path})"
