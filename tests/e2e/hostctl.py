"""Drive one real WebUI host (AUTOMATIC1111, Forge, SD.Next) the way a user does: over HTTP.

The hosts are built by ``tools/hosts/build.sh`` outside the clone and started with their own
``start.sh`` / ``stop.sh``; this module (with :mod:`.build` and :mod:`.extensions`) only copies
the current working tree in as an extension, parks the other "DeepCache" extensions that would
steal our API args, starts and stops the server, and talks to its JSON API with the standard
library. Nothing here imports the project: the parsers in :mod:`.oracles` are written
independently so that they can serve as the oracle for what the extension writes.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import HostApi
from .build import HostError, build_host, tail
from .extensions import install_tree, place_other_extension

HOST_NAMES = ("a1111", "forge", "sdnext")
# Added to every host's port, so that a second checkout (with its own DEEPCACHE_HOSTS_DIR) can
# drive its own servers beside this one's without a clash.
PORT_OFFSET = int(os.environ.get("DEEPCACHE_E2E_PORT_OFFSET", "0"))
DEFAULT_FOLDER = "sd-webui-deepcache"
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class HostSpec:
    """What differs between the three hosts, as their READMEs in shared/hosts describe it."""

    name: str
    port: int
    extensions_dir: str  # relative to TARGET
    config: str  # the host's settings file, relative to TARGET
    other_extension: str | None  # folder of the other extension titled "DeepCache"
    controlnet: str | None = None  # folder of a ControlNet extension the build parks
    start_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


SPECS: dict[str, HostSpec] = {
    "a1111": HostSpec(
        "a1111",
        7861,
        "data/extensions",
        "data/config.json",
        "sd-webui-deepcache-standalone",
        controlnet="sd-webui-controlnet",  # tools/hosts/a1111-extras.sh parks it
        start_args=("--threads", "1"),
    ),
    "forge": HostSpec(
        "forge",
        7880,
        "data/extensions",
        "data/config.json",
        "sd-deepcache",
        env=(("OMP_NUM_THREADS", "1"),),
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


@dataclass(frozen=True)
class HostState:
    """What a running host looks like; a test asks for one, and only a difference restarts."""

    ui: bool = False
    other_extension: bool = False
    folder: str = DEFAULT_FOLDER
    controlnet: bool = False  # the host's parked ControlNet extension installed

    def sort_key(self) -> tuple[bool, bool, bool, bool, str]:
        """Default state first, so that the common case never waits for a restart."""
        return (
            self.ui,
            self.other_extension,
            self.controlnet,
            self.folder != DEFAULT_FOLDER,
            self.folder,
        )


class HostServer(HostApi):
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
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self.spec.port + PORT_OFFSET

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
        """Build the host once per machine (cached) and remember its directory."""
        self._target = build_host(self.name, self.log_dir)
        return self._target

    # ------------------------------------------------------------------ extensions
    def install_extension(self, folder_name: str = DEFAULT_FOLDER) -> Path:
        """Copy the working tree in as ``folder_name`` (see :func:`install_tree`)."""
        if self.running():
            raise HostError(f"{self.name}: stop the host before changing its extensions")
        dest = install_tree(self.extensions_dir, folder_name)
        self._installed = folder_name
        return dest

    def set_other_extension(self, present: bool) -> None:
        """Park the other extension titled "DeepCache" in TARGET/parked-extensions, or unpark it."""
        self._place_parked(self.spec.other_extension, present, "other DeepCache extension")

    def other_extension_present(self) -> bool:
        return self._installed_folder(self.spec.other_extension)

    def set_controlnet(self, present: bool) -> None:
        """Install the ControlNet extension the build parked, or park it again."""
        self._place_parked(self.spec.controlnet, present, "ControlNet extension")

    def controlnet_present(self) -> bool:
        return self._installed_folder(self.spec.controlnet)

    def _place_parked(self, folder: str | None, present: bool, what: str) -> None:
        if folder is None:
            if present:
                raise HostError(f"{self.name} has no {what} to install")
            return
        if self.running():
            raise HostError(f"{self.name}: stop the host before changing its extensions")
        place_other_extension(self.extensions_dir / folder, self.parked_dir / folder, present)

    def _installed_folder(self, folder: str | None) -> bool:
        return folder is not None and (self.extensions_dir / folder).is_dir()

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

    def start(self, ui: bool = False, settings: dict[str, Any] | None = None) -> None:
        """Start with the host's own start.sh, one torch thread, and wait until it answers.
        ``settings``: merged into the host's settings file for this run only (a checkpoint to
        start with); the next start begins from the build's settings again."""
        if self.state is not None and self.running():
            raise HostError(f"{self.name}: already started by this session")
        leftover = self.pid()
        if leftover is not None:
            raise HostError(
                f"{self.name}: a server from elsewhere runs (pid {leftover}); "
                f"stop it with {self.target / 'stop.sh'}"
            )
        self._restore_settings()
        if settings:
            config = self.target / self.spec.config
            config.write_text(json.dumps({**json.loads(config.read_text()), **settings}))
        port = str(self.port)
        env = {**os.environ, **dict(self.spec.env), "PORT": port, "FORGE_PORT": port}
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
            ui=ui,
            other_extension=self.other_extension_present(),
            folder=self._installed or "",
            controlnet=self.controlnet_present(),
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

    def ensure(self, want: HostState) -> None:
        """Bring the host into this state, restarting only when something differs.

        The first call of a session always installs a fresh copy of the working tree.
        """
        if self.state == want and self.running():
            return
        layout = (want.folder, want.other_extension, want.controlnet)
        present = (self._installed, self.other_extension_present(), self.controlnet_present())
        if self._installed is None or layout != present:
            self.stop()
            self.set_other_extension(want.other_extension)
            self.set_controlnet(want.controlnet)
            self.install_extension(want.folder)
        elif self.state is not None:
            self.stop()  # another mode, or the server died
        self.start(ui=want.ui)

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
        return tail(self.log_path, chars)
