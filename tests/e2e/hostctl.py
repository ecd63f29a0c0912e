"""Drive one real WebUI host (AUTOMATIC1111, Forge, SD.Next) the way a user does: over HTTP.

The hosts are built by ``tools/hosts/build.sh`` outside the clone and started with their own
``start.sh`` / ``stop.sh``; this module only copies the current working tree in as an extension,
parks the other "DeepCache" extensions that would steal our API args, starts and stops the
server, and talks to its JSON API with the standard library. Nothing here imports the project:
the infotext parser and the step-count parser are written independently so that they can serve
as the oracle for what the extension writes.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_NAMES = ("a1111", "forge", "sdnext")
DEFAULT_FOLDER = "sd-webui-deepcache"
# Written into every copy of this repository that we install, so that a later run can find and
# remove it whatever folder name it was installed under (the title-clash tests rename it).
OUR_MARKER = ".deepcache-e2e-installed"
BUILD_TIMEOUT_S = 3 * 3600
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class HostSpec:
    """What differs between the three hosts, as their READMEs in shared/hosts describe it."""

    name: str
    port: int
    extensions_dir: str  # relative to TARGET
    config: str  # the host's settings file, relative to TARGET
    other_extension: str | None  # folder of the other extension titled "DeepCache"
    start_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


SPECS: dict[str, HostSpec] = {
    "a1111": HostSpec(
        "a1111",
        7861,
        "data/extensions",
        "data/config.json",
        "sd-webui-deepcache-standalone",
        start_args=("--threads", "1"),
    ),
    "forge": HostSpec(
        "forge",
        7880,
        "data/extensions",
        "data/config.json",
        "sd-deepcache",
        env=(("OMP_NUM_THREADS", "1"), ("FORGE_PORT", "7880")),
    ),
    "sdnext": HostSpec(
        "sdnext",
        7890,
        "sdnext/extensions",
        "sdnext/config.json",
        None,  # its DeepCache is built in (a setting, off by default), not an extension
        env=(("OMP_NUM_THREADS", "1"),),
    ),
}


class HostError(RuntimeError):
    """The host could not be built, started or reached; the message carries its log tail."""


@dataclass(frozen=True)
class HostState:
    """What a running host looks like; a test asks for one, and only a difference restarts."""

    ui: bool = False
    other_extension: bool = False
    folder: str = DEFAULT_FOLDER

    def sort_key(self) -> tuple[bool, bool, bool, str]:
        """Default state first, so that the common case never waits for a restart."""
        return (self.ui, self.other_extension, self.folder != DEFAULT_FOLDER, self.folder)


# --------------------------------------------------------------------------- infotext oracle
def split_outside_quotes(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` except inside double quotes (backslash escapes honoured)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def unquote(value: str) -> str:
    """A quoted infotext value as written (JSON string escaping), others unchanged."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value[1:-1]
        return decoded if isinstance(decoded, str) else value[1:-1]
    return value


def parse_infotext_line(line: str) -> dict[str, str]:
    """``Key: value, Key: "quoted, value"`` into a dict; a piece without a key joins the last."""
    fields: dict[str, str] = {}
    last: str | None = None
    for piece in split_outside_quotes(line):
        key, sep, value = piece.partition(":")
        if not sep or not key.strip():
            if last is not None:
                fields[last] = f"{fields[last]},{piece}"
            continue
        last = key.strip()
        fields[last] = unquote(value)
    return fields


def parameters_line(infotext: str) -> str:
    """The generation-parameters line of an infotext: the last line (prompt lines come first)."""
    lines = [line for line in infotext.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


_COUNTS = re.compile(r"^\s*(\d+)\s+full\s*/\s*(\d+)\s+cached\s*$")


def parse_counts(text: str) -> Any:
    """``"4 full / 8 cached"`` -> ``(4, 8)``; two passes -> ``{"first pass": (4, 8), ...}``."""
    text = unquote(text)
    if ";" not in text and not re.match(r"^\s*[a-z]", text):
        match = _COUNTS.match(text)
        if match is None:
            raise ValueError(f"not a DeepCache step count: {text!r}")
        return int(match[1]), int(match[2])
    passes: dict[str, tuple[int, int]] = {}
    for part in text.split(";"):
        match = re.match(r"^\s*([a-z][a-z ]*?)\s+(\d+\s+full\s*/\s*\d+\s+cached)\s*$", part)
        if match is None:
            raise ValueError(f"not a DeepCache pass count: {part!r} in {text!r}")
        passes[match[1]] = parse_counts(match[2])
    return passes


# --------------------------------------------------------------------------- log oracle
# A sampling loop's progress bar starts at "0/N": tqdm's "| 0/12 [" (A1111, Forge) and SD.Next's
# "0% 0/12 00:00". The job-wide "Total progress" bar of A1111/Forge is not a sampling loop.
_BAR_START = re.compile(r"\s0/(\d+)\s")


def sampler_runs(log_text: str) -> list[int]:
    """The step count of each sampling loop a log slice shows, in order (host-independent).

    This is the hosts' own account of how many steps each pass executed, the oracle that the
    extension's "DeepCache steps" counts are checked against.
    """
    runs = []
    for segment in re.split(r"[\r\n]", log_text):
        if "Total progress" in segment:
            continue
        runs.extend(int(total) for total in _BAR_START.findall(segment + " "))
    return runs


def generation_ran(log_text: str) -> bool:
    """Whether a log slice shows any sampling (a progress bar, or SD.Next's "Processed:")."""
    return bool(sampler_runs(log_text)) or "Processed: images=" in log_text


# --------------------------------------------------------------------------- images
def decode_png(data: str) -> np.ndarray:
    """A base64 PNG (with or without a ``data:`` prefix) as a uint8 array (H, W[, C])."""
    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.array(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


def png_b64(array: np.ndarray) -> str:
    """A uint8 array (H, W) or (H, W, 3) as base64 PNG, for init images and masks."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Largest per-pixel difference; 0 means bit-identical images."""
    if a.shape != b.shape:
        raise AssertionError(f"image shapes differ: {a.shape} vs {b.shape}")
    return int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def noise_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A deterministic RGB noise picture: an init image that no host can special-case."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def left_half_mask(size: int = 64) -> np.ndarray:
    """Inpainting mask: the left half white (repainted), the right half black (kept)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    return mask


# --------------------------------------------------------------------------- requests
def deepcache(**fields: Any) -> dict[str, Any]:
    """``alwayson_scripts`` for DeepCache in the one-object form; enabled unless told otherwise."""
    return {"DeepCache": {"args": [{"enabled": True, **fields}]}}


def deepcache_positional(args: Sequence[Any]) -> dict[str, Any]:
    """``alwayson_scripts`` for DeepCache in the positional form (README, "Use from the API")."""
    return {"DeepCache": {"args": list(args)}}


def base_payload(host: HostServer | str, **overrides: Any) -> dict[str, Any]:
    """A small deterministic request (64x64, 12 Euler steps), so each call takes seconds."""
    payload: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "seed": 1234,
        "steps": 12,
        "width": 64,
        "height": 64,
        "cfg_scale": 7,
        "sampler_name": "Euler",
    }
    payload.update(overrides)
    return with_host_quirks(host, payload)


def with_host_quirks(host: HostServer | str, payload: dict[str, Any]) -> dict[str, Any]:
    """Forge answers HTTP 500 to a hires request without ``hr_additional_modules``."""
    name = host if isinstance(host, str) else host.name
    if name == "forge" and payload.get("enable_hr"):
        payload.setdefault("hr_additional_modules", ["Use same choices"])
    return payload


@dataclass
class Result:
    """One answered generation request."""

    status: int
    body: Any
    images_b64: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    log: str = ""  # the host's log while the request ran

    @classmethod
    def from_response(cls, status: int, body: Any, log: str = "") -> Result:
        if status != 200 or not isinstance(body, dict):
            return cls(status, body, log=log)
        encoded = [str(item) for item in body.get("images") or []]
        info_raw = body.get("info") or "{}"
        info = json.loads(info_raw) if isinstance(info_raw, str) else dict(info_raw)
        return cls(status, body, encoded, [decode_png(item) for item in encoded], info, log)

    @property
    def sampler_runs(self) -> list[int]:
        """Steps of each sampling loop the host logged for this request."""
        return sampler_runs(self.log)

    @property
    def infotexts(self) -> list[str]:
        return [str(text) for text in self.info.get("infotexts") or []]

    def fields(self, i: int = 0) -> dict[str, str]:
        """The parsed parameters line of image ``i``'s infotext."""
        texts = self.infotexts
        if i >= len(texts):
            raise AssertionError(f"no infotext {i}; info: {json.dumps(self.info)[:2000]}")
        return parse_infotext_line(parameters_line(texts[i]))

    def counts(self, i: int = 0) -> Any:
        """Image ``i``'s ``DeepCache steps``, parsed (see :func:`parse_counts`)."""
        fields = self.fields(i)
        assert "DeepCache steps" in fields, f"no DeepCache steps in {self.infotexts[i]!r}"
        return parse_counts(fields["DeepCache steps"])


# --------------------------------------------------------------------------- the host
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


class HostServer:
    """One real host: its build directory, its extension folders and its running server."""

    def __init__(self, name: str, log_dir: Path | None = None) -> None:
        if name not in SPECS:
            raise ValueError(f"unknown host {name!r}; one of {', '.join(SPECS)}")
        self.name = name
        self.spec = SPECS[name]
        self.log_dir = log_dir
        self._target: Path | None = None
        self.state: HostState | None = None  # None: not started by us
        self._installed: str | None = None  # folder of our copy installed in this session
        # Log offset where the current server run begins: start-up messages are read from here.
        self.start_mark = 0
        atexit.register(self.stop)  # a session that dies outside pytest's teardown still stops

    # ------------------------------------------------------------------ layout
    @property
    def target(self) -> Path:
        if self._target is None:
            raise HostError(f"{self.name}: not built yet (call ensure_built())")
        return self._target

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def log_path(self) -> Path:
        return self.target / "run" / "webui.log"

    @property
    def extensions_dir(self) -> Path:
        return self.target / self.spec.extensions_dir

    @property
    def parked_dir(self) -> Path:
        return self.target / "parked-extensions"

    @property
    def has_other_extension(self) -> bool:
        return self.spec.other_extension is not None

    def __repr__(self) -> str:
        return f"HostServer({self.name!r}, state={self.state})"

    def ensure_built(self) -> Path:
        """Build the host once per machine (cached) and remember its directory.

        A build of the same host already running (started by hand or by another session) is
        waited for instead of started twice; a lock file serialises our own sessions.
        """
        # no dot in the path: gradio refuses (403) to serve page scripts from a hidden folder
        base = Path(os.environ.get("DEEPCACHE_HOSTS_DIR", Path.home() / "sd-webui-deepcache-hosts"))
        base.mkdir(parents=True, exist_ok=True)
        log_dir = self.log_dir or base
        log_dir.mkdir(parents=True, exist_ok=True)
        build_log = log_dir / f"build-{self.name}.log"
        with open(base / f".e2e-build-{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while _build_running(self.name):
                if time.monotonic() > deadline:
                    raise HostError(f"{self.name}: another build still runs after the timeout")
                time.sleep(10)
            with open(build_log, "ab") as stderr:
                proc = subprocess.run(
                    ["bash", str(REPO_ROOT / "tools/hosts/build.sh"), self.name],
                    cwd=REPO_ROOT,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise HostError(
                f"{self.name}: build failed (exit {proc.returncode}); tail of {build_log}:\n"
                + _tail(build_log)
            )
        target = Path(lines[-1])
        if not (target / "start.sh").is_file():
            raise HostError(f"{self.name}: build printed {target}, which has no start.sh")
        self._target = target
        return target

    # ------------------------------------------------------------------ extensions
    def our_copies(self) -> list[Path]:
        """Folders in the extensions dir holding this repository (by marker or by layout)."""
        if not self.extensions_dir.is_dir():
            return []
        return sorted(
            path
            for path in self.extensions_dir.iterdir()
            if path.is_dir()
            and (
                (path / OUR_MARKER).is_file()
                or ((path / "lib_deepcache").is_dir() and (path / "scripts/deepcache.py").is_file())
            )
        )

    def install_extension(self, folder_name: str = DEFAULT_FOLDER) -> Path:
        """Copy the working tree (uncommitted files too) in as ``folder_name``; only one copy.

        Files are what ``git ls-files -co --exclude-standard`` lists, so ``.venv`` and caches
        stay out. Scripts load at start: restart the host afterwards.
        """
        if self.running():
            raise HostError(f"{self.name}: stop the host before changing its extensions")
        for old in self.our_copies():
            shutil.rmtree(old)
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            check=True,
        ).stdout.decode()
        dest = self.extensions_dir / folder_name
        if dest.exists():
            raise HostError(f"{self.name}: {dest} exists and is not ours; choose another folder")
        for rel in filter(None, listed.split("\0")):
            source = REPO_ROOT / rel
            if not source.is_file():  # deleted in the working tree but still tracked
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
        (dest / OUR_MARKER).write_text(f"copied from {REPO_ROOT} by tests/e2e\n")
        self._installed = folder_name
        return dest

    def set_other_extension(self, present: bool) -> None:
        """Park the other extension titled "DeepCache" in TARGET/parked-extensions, or unpark it."""
        other = self.spec.other_extension
        if other is None:
            if present:
                raise HostError(f"{self.name} has no other DeepCache extension to install")
            return
        if self.running():
            raise HostError(f"{self.name}: stop the host before changing its extensions")
        active, parked = self.extensions_dir / other, self.parked_dir / other
        source, dest = (parked, active) if present else (active, parked)
        if dest.exists() and source.exists():
            raise HostError(f"{self.name}: both {active} and {parked} exist; remove one")
        if source.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(dest))
        if present and not active.is_dir():
            raise HostError(f"{self.name}: {other} is neither installed nor parked")

    def other_extension_present(self) -> bool:
        other = self.spec.other_extension
        return other is not None and (self.extensions_dir / other).is_dir()

    # ------------------------------------------------------------------ server
    def pid(self) -> int | None:
        try:
            pid = int((self.target / "run" / "webui.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, ui: bool = False) -> None:
        """Start with the host's own start.sh, one torch thread, and wait until it answers."""
        if self.state is not None and self.running():
            raise HostError(f"{self.name}: already started by this session")
        leftover = self.pid()
        if leftover is not None:
            raise HostError(
                f"{self.name}: a server from elsewhere runs (pid {leftover}); "
                f"stop it with {self.target / 'stop.sh'}"
            )
        self._restore_settings()
        env = {**os.environ, **dict(self.spec.env), "PORT": str(self.spec.port)}
        args = [str(self.target / "start.sh"), *(["--ui"] if ui else []), *self.spec.start_args]
        if self.name == "forge":
            # Forge's page scripts live in webui/, but gradio 4 serves files only from the
            # allowed paths, which default to --data-dir alone (a recipe quirk: 403 otherwise)
            args += ["--gradio-allowed-path", str(self.target / "webui")]
        mark = self.start_mark = self.log_mark()
        try:
            proc = subprocess.run(
                args,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.state = HostState(ui=ui)  # so that stop() cleans up
            raise HostError(
                f"{self.name}: start.sh timed out\n{self.log_since(mark)[-4000:]}"
            ) from None
        if proc.returncode != 0:
            self.state = HostState(ui=ui)  # start.sh may leave a process behind: stop() it
            raise HostError(
                f"{self.name}: start.sh {' '.join(args[1:])} failed ({proc.returncode}):\n"
                + proc.stdout.decode(errors="replace")[-4000:]
            )
        self.state = HostState(
            ui=ui, other_extension=self.other_extension_present(), folder=self._installed or ""
        )

    def _restore_settings(self) -> None:
        """Start every run from the settings the build made. A test's ``/sdapi/v1/options``
        call saves all settings in memory, including a checkpoint another test selected with
        ``override_settings``, and A1111 restores no override that its config file lacks."""
        config = self.target / self.spec.config
        pristine = self.target / "run" / "config.e2e-pristine.json"
        if pristine.is_file():
            shutil.copy2(pristine, config)
        elif config.is_file():
            pristine.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(config, pristine)

    def stop(self) -> None:
        """Stop the server this session started; harmless when it is not running."""
        if self.state is None or self._target is None:
            return
        self.state = None
        subprocess.run(
            [str(self.target / "stop.sh")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    def ensure(
        self, ui: bool = False, other_extension: bool = False, folder: str = DEFAULT_FOLDER
    ) -> None:
        """Bring the host into this state, restarting only when something differs.

        The first call of a session always installs a fresh copy of the working tree.
        """
        want = HostState(ui, other_extension, folder)
        if self.state == want and self.running():
            return
        layout = (folder, other_extension)
        if self._installed is None or layout != (self._installed, self.other_extension_present()):
            self.stop()
            self.set_other_extension(other_extension)
            self.install_extension(folder)
        elif self.state is not None:
            self.stop()  # another mode, or the server died
        self.start(ui=ui)

    # ------------------------------------------------------------------ log
    def log_mark(self) -> int:
        """Where the log ends now; pass it to :meth:`log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(mark)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return _tail(self.log_path, chars)

    # ------------------------------------------------------------------ HTTP
    def request(
        self, method: str, path: str, payload: Any = None, timeout: float = 600
    ) -> tuple[int, Any]:
        """JSON in, (status, JSON or text) out; HTTP errors are answers, not exceptions."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise HostError(
                f"{self.name}: {method} {path} got no answer ({error}); log tail:\n"
                + self.log_tail()
            ) from None
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def post(self, path: str, payload: Any, timeout: float = 600) -> tuple[int, Any]:
        return self.request("POST", path, payload, timeout)

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        return self.request("GET", path, None, timeout)

    def generate(self, route: str, payload: dict[str, Any], expect: int = 200) -> Result:
        """POST a generation and check the status; a failure shows the body and the log."""
        mark = self.log_mark()
        status, body = self.post(f"/sdapi/v1/{route}", with_host_quirks(self, payload))
        log = self.log_since(mark)
        for _ in range(20):  # the last progress line may reach the log just after the answer
            if status != 200 or generation_ran(log):
                break
            time.sleep(0.1)
            log = self.log_since(mark)
        if status != expect:
            shown = json.dumps(body)[:3000] if not isinstance(body, str) else body[:3000]
            raise AssertionError(
                f"{self.name} {route}: HTTP {status}, expected {expect}\nbody: {shown}\n"
                f"log since the request:\n{log[-6000:]}"
            )
        return Result.from_response(status, body, log)

    def txt2img(self, payload: dict[str, Any], expect: int = 200) -> Result:
        return self.generate("txt2img", payload, expect)

    def img2img(self, payload: dict[str, Any], expect: int = 200) -> Result:
        return self.generate("img2img", payload, expect)

    def sampler_names(self) -> list[str]:
        status, body = self.get("/sdapi/v1/samplers")
        if status != 200 or not isinstance(body, list):
            raise HostError(f"{self.name}: /sdapi/v1/samplers answered {status}: {body!r:.500}")
        return [str(item.get("name")) for item in body if isinstance(item, dict)]


def _tail(path: Path, chars: int = 6000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - chars))
        return handle.read().decode(errors="replace")
    return f"(no {path})"
