"""What the fault scenarios in the real hosts share (test_faults*.py): the images of a freshly
started host to compare with, a generation stopped midway from a second thread, the host's own
count of the steps a loop ran, the server process's resident memory, and a restart on another
checkpoint. Nothing here imports the extension: the oracles are the hosts' own outputs."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hostctl import HostServer
from .payloads import Result, base_payload, deepcache, latent_hires_2x

# The first pass and the hires pass of the requests stopped midway: 40 steps each side of a
# 12-step pass, so a stop after the second step leaves most of the loop undone.
LONG_STEPS = 40
SHORT_STEPS = 12
POLL_S = 0.1
STOP_AFTER_STEP = 2


def hires(host: HostServer, steps: int = 8) -> dict[str, Any]:
    """Hires fix at 2x with a latent upscaler in the host's terms (SD.Next needs a resize mode
    and names its latent upscalers "Latent Nearest", ...; Forge needs its modules field)."""
    fields = {**latent_hires_2x(), "hr_second_pass_steps": steps}
    if host.name == "sdnext":
        fields.update(hr_resize_mode=1, hr_upscaler="Latent Nearest")
    return fields


def requests(host: HostServer) -> dict[str, dict[str, Any]]:
    """The requests the fault scenarios repeat after a fault, by name (txt2img, 64 px)."""
    on = deepcache(interval=3)
    return {
        "plain": base_payload(host),
        "cached": base_payload(host, alwayson_scripts=on),
        "auto": base_payload(host, alwayson_scripts=deepcache()),
        "long": base_payload(host, steps=LONG_STEPS, alwayson_scripts=on),
        "long hires": base_payload(
            host, steps=SHORT_STEPS, **hires(host, LONG_STEPS), alwayson_scripts=on
        ),
    }


_FRESH: dict[str, dict[str, Result]] = {}


def fresh_results(host: HostServer) -> dict[str, Result]:
    """:func:`requests` answered by a freshly started host: restarted once per session, before
    any fault, so that nothing another scenario did can be in these images."""
    if host.name not in _FRESH:
        host.stop()
        host.start()
        _FRESH[host.name] = {name: host.txt2img(p) for name, p in requests(host).items()}
    return _FRESH[host.name]


# --------------------------------------------------------------------------- the host's counts
_STEP = re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])")


def loop_progress(log: str, total: int) -> int:
    """The furthest step the host's progress bars show for a sampling loop of ``total`` steps:
    ``k`` of their ``k/total`` (A1111's and Forge's job-wide "Total progress" bar left out)."""
    done = 0
    for segment in re.split(r"[\r\n]|\x1b\[A", log):
        if "Total progress" in segment:
            continue
        for step, steps in _STEP.findall(segment):
            if int(steps) == total:
                done = max(done, int(step))
    return done


# --------------------------------------------------------------------------- a stop midway
def stop_midway(
    host: HostServer, payload: dict[str, Any], action: str, when: Callable[[dict], bool]
) -> tuple[int, Any, str]:
    """POST txt2img from a thread; poll ``/sdapi/v1/progress`` and POST ``/sdapi/v1/<action>``
    (interrupt, skip) once ``when(state)`` holds. Returns the generation's status, body and the
    host's log while it ran; fails when the moment never came."""
    mark = host.log_mark()
    answer: dict[str, Any] = {}

    def generate() -> None:
        answer["status"], answer["body"] = host.post("/sdapi/v1/txt2img", payload)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    sent, states = False, []
    while thread.is_alive() and not sent:
        status, progress = host.get("/sdapi/v1/progress?skip_current_image=true")
        state = progress.get("state", {}) if isinstance(progress, dict) else {}
        states.append(state)
        if when(state):
            status, _ = host.post(f"/sdapi/v1/{action}", {})
            assert status in (200, 204), f"{action}: HTTP {status}"
            sent = True
        time.sleep(POLL_S)
    thread.join(timeout=600)
    assert sent, f"the generation ended before the moment to {action}: {states[-5:]}"
    time.sleep(0.3)  # the last progress line may reach the log just after the answer
    return answer["status"], answer["body"], host.log_since(mark)


def in_first_pass(state: dict) -> bool:
    return (state.get("sampling_step") or 0) >= STOP_AFTER_STEP


def in_hires_pass() -> Callable[[dict], bool]:
    """True once the hires loop (``LONG_STEPS``) runs, after the first pass's loop was seen
    (the progress state can still hold the previous job's step count at the start)."""
    seen_first = []

    def when(state: dict) -> bool:
        steps = state.get("sampling_steps")
        if steps == SHORT_STEPS:
            seen_first.append(True)
        return bool(seen_first) and steps == LONG_STEPS and in_first_pass(state)

    return when


# --------------------------------------------------------------------------- memory
def server_rss_kib(host: HostServer) -> int:
    """Resident memory (VmRSS) of the server's Python process: the process ``run/webui.pid``
    names, or the largest Python process under it (a start script may sit in between)."""
    pid = host.pid()
    assert pid is not None, f"{host.name} is not running"
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    sizes = [rss for p in tree if "python" in _cmdline(p) and (rss := _rss_kib(p)) is not None]
    assert sizes, f"{host.name}: no Python process under pid {pid}"
    return max(sizes)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- checkpoints
# Each host's SD 1.x e2e checkpoint and its SDXL-layout one (tools/hosts/*-extras.sh), by the
# names its API takes in ``sd_model_checkpoint``.
CHECKPOINTS = {
    "a1111": ("tiny-sd15-random", "tiny-sdxl-random"),
    "forge": ("sd15-random-small", "sdxl-random-narrow"),
    "sdnext": ("Diffusers/tiny-sd15", "Diffusers/tiny-sdxl"),
}
# and the name the infotext's "Model" field gives each
MODEL_FIELD = {
    "a1111": ("tiny-sd15-random", "tiny-sdxl-random"),
    "forge": ("sd15-random-small", "sdxl-random-narrow"),
    "sdnext": ("tiny-sd15", "tiny-sdxl"),
}


def checkpoint_setting(host: HostServer, name: str) -> str:
    """The ``sd_model_checkpoint`` value the host's settings file holds for a checkpoint."""
    return name if host.name == "sdnext" else f"{name}.safetensors"


def select_checkpoint(host: HostServer, name: str) -> None:
    """``POST /sdapi/v1/options`` with the checkpoint (the host loads it then or at the next
    generation)."""
    status, body = host.post("/sdapi/v1/options", {"sd_model_checkpoint": name}, timeout=600)
    assert status == 200, (status, body)


def started_on(host: HostServer, checkpoint: str) -> None:
    """Restart the host with ``checkpoint`` in its settings file (this run only)."""
    host.stop()
    host.start(settings={"sd_model_checkpoint": checkpoint_setting(host, checkpoint)})
