"""Installing this repository into a real host as a user does: from a git URL, through the
host's own extension manager, with the host's restart after *Apply*.

- :class:`GitSource`: HEAD of this checkout (committed files only) as a bare repository served
  by ``git daemon`` on 127.0.0.1 as a ``git://`` URL (SD.Next accepts only http(s)://, git://,
  ssh:// URLs, A1111 and Forge any git URL), and a newer commit made in a scratch clone of it.
  Not git's "dumb" HTTP: A1111 and Forge clone with ``--filter=blob:none``, and a fetch into
  such a clone from a dumb server never ends (their *Check for updates* hung for 300 s).
- :class:`Launcher`: the host started with installs from its Extensions tab allowed (the recipes
  bind ``--server-name 127.0.0.1``, which the hosts count as remote access), and restarted the
  way its own launcher would once *Apply* asks for it.
- :func:`host_left_as_found`: our working-tree copy parked for the test, the settings files and
  the host's backups put back afterwards.
- A ``sitecustomize.py`` probe on ``PYTHONPATH`` notes every Python the host starts with an
  extension's ``install.py`` as its script, so the test sees that the installer ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .build import REPO_ROOT, HostError
from .extensions import our_copies
from .hostctl import HostServer

FOLDER = "sd-webui-deepcache-from-url"  # the URL's last part: the folder the host clones into
PROBE_ENV = "DEEPCACHE_E2E_INSTALL_PROBE"
PROBE = f'''"""e2e probe: note each Python started with an extension's install.py as its script."""
import json, os, sys
if sys.argv and os.path.basename(sys.argv[0]) == "install.py" and os.environ.get("{PROBE_ENV}"):
    with open(os.environ["{PROBE_ENV}"], "a") as probe:
        probe.write(json.dumps({{"script": os.path.abspath(sys.argv[0]),
                                 "python": sys.executable}}) + "\\n")
'''
# The recipes' start.sh arguments that allow installs from the Extensions tab.
EXTENSION_ACCESS = {
    "a1111": ("--threads", "1", "--", "--enable-insecure-extension-access"),
    "forge": ("--enable-insecure-extension-access",),
    "sdnext": ("--", "--insecure"),
}
RESTART_TIMEOUT_S = 900


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout.decode()


class GitSource:
    """This checkout's HEAD as ``git://127.0.0.1:PORT/sd-webui-deepcache-from-url``."""

    def __init__(self, root: Path) -> None:
        served = root / "served"
        self.repo = served / FOLDER
        served.mkdir(parents=True)
        git("clone", "--quiet", "--bare", str(REPO_ROOT), str(self.repo))
        git("config", "uploadpack.allowFilter", "true", cwd=self.repo)  # the hosts' blob:none
        self.head = git("rev-parse", "HEAD", cwd=self.repo).strip()
        port = _free_port()
        self._daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={served}",
             "--listen=127.0.0.1", f"--port={port}", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"git://127.0.0.1:{port}/{FOLDER}"
        deadline = time.monotonic() + 30
        while subprocess.run(["git", "ls-remote", self.url], capture_output=True).returncode:
            if time.monotonic() > deadline or self._daemon.poll() is not None:
                self.close()
                raise HostError(f"git daemon did not serve {self.url}")
            time.sleep(0.2)

    def push_newer_commit(self, scratch: Path) -> str:
        """A second commit on top of HEAD, made in a scratch clone and pushed here; its id."""
        git("clone", "--quiet", str(self.repo), str(scratch))
        with open(scratch / "README.md", "a") as readme:
            readme.write("\nUpdated by the e2e install test.\n")
        identity = ("-c", "user.name=e2e", "-c", "user.email=e2e@127.0.0.1")
        git(*identity, "commit", "--quiet", "-am", "e2e: a newer commit", cwd=scratch)
        git("push", "--quiet", "origin", "HEAD", cwd=scratch)
        return git("rev-parse", "HEAD", cwd=scratch).strip()

    def close(self) -> None:
        self._daemon.terminate()
        self._daemon.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Launcher:
    """Starts ``server``'s host with its Extensions tab open to installs, and restarts it after
    *Apply* as its launcher would: A1111 and Forge exit leaving ``tmp/restart`` for webui.sh's
    loop, which we play; SD.Next re-executes itself in place."""

    def __init__(self, server: HostServer, probe_dir: Path) -> None:
        self.server = server
        self.probe_log = probe_dir / "install-py-runs.jsonl"
        (probe_dir / "sitecustomize.py").write_text(PROBE)
        self.probe_dir = probe_dir
        self.start_seconds: list[float] = []

    @property
    def restart_flag(self) -> Path:
        return self.server.target / "webui" / "tmp" / "restart"

    def env(self) -> dict[str, str]:
        port = str(self.server.port)
        venv_bin = self.server.target / "venv" / "bin"
        return {
            **os.environ,
            **dict(self.server.spec.env),
            "PORT": port,
            "FORGE_PORT": port,
            # webui.sh's restart loop (A1111, Forge): the button then reads "Apply and restart UI"
            "SD_WEBUI_RESTART": "tmp/restart",
            # the launchers run with the venv activated; SD.Next's restart re-executes "python"
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(self.probe_dir),
            PROBE_ENV: str(self.probe_log),
        }

    def start(self) -> None:
        args = [str(self.server.target / "start.sh"), "--ui"]
        if self.server.name == "forge":  # gradio 4 serves page scripts from allowed paths only
            args += ["--gradio-allowed-path", str(self.server.target / "webui")]
        args += EXTENSION_ACCESS[self.server.name]
        began = time.monotonic()
        proc = subprocess.run(
            args,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=RESTART_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            self.stop()
            raise HostError(f"{self.server.name}: {' '.join(args)} failed:\n{proc.stdout!r:.4000}")
        self.start_seconds.append(time.monotonic() - began)

    def stop(self) -> None:
        subprocess.run(
            [str(self.server.target / "stop.sh")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    def await_restart(self, pid: int, mark: int) -> str:
        """After *Apply*: wait for the host's own restart, or play its launcher's; the route."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        if self.server.name == "sdnext":
            while "Startup time:" not in self.restarted_log(mark):
                if time.monotonic() > deadline or self.server.pid() != pid:
                    raise HostError(f"sdnext: no restart\n{self.server.log_since(mark)[-4000:]}")
                time.sleep(1)
            wait_for_model(self.server, deadline)
            return "SD.Next re-executed itself in place (os.execv), same pid"
        while self.server.pid() == pid:
            if time.monotonic() > deadline:
                raise HostError(f"{self.server.name}: still running after Apply")
            time.sleep(0.5)
        if not self.restart_flag.is_file():
            raise AssertionError(f"{self.server.name} quit instead of asking for a restart")
        self.start()  # launch.py removes tmp/restart as it starts
        return "the host exited leaving tmp/restart; started again as webui.sh's loop does"

    def restarted_log(self, mark: int) -> str:
        log = self.server.log_since(mark)
        return log.split("Server restarting", 1)[1] if "Server restarting" in log else ""

    def installer_runs(self) -> list[dict[str, str]]:
        if not self.probe_log.is_file():
            return []
        return [json.loads(line) for line in self.probe_log.read_text().splitlines()]


def wait_for_model(server: HostServer, deadline: float) -> None:
    """Until the API answers with a loaded pipeline (what SD.Next's start.sh waits for)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(HostError):
            status, body = server.get("/sdapi/v1/checkpoint", timeout=10)
            if status == 200 and isinstance(body, dict) and body.get("class"):
                return
        time.sleep(2)
    raise HostError(f"{server.name}: no model after the restart\n{server.log_tail()}")


def pip_freeze(server: HostServer) -> list[str]:
    python = server.target / "venv" / "bin" / "python"
    return sorted_lines([str(python), "-m", "pip", "freeze", "--all"])


def sorted_lines(command: list[str]) -> list[str]:
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, timeout=300).stdout
    return sorted(out.decode().splitlines())


@contextlib.contextmanager
def host_left_as_found(server: HostServer) -> Iterator[Path]:
    """The host without our copy for the test (parked in run/), and afterwards as it was:
    the installed folder removed, our copy back, the settings files and the WebUI's backups as
    before. Yields the folder the host will clone into."""
    extensions = server.extensions_dir
    installed = extensions / FOLDER
    if installed.exists():
        raise HostError(f"{installed} exists before the test: remove it")
    parked = server.target / "run" / "install-test-parked"
    config = server.target / server.spec.config
    settings = [config, config.with_name("ui-config.json")]
    saved = {path: path.read_bytes() for path in settings if path.is_file()}
    backups = config.parent / "config_states"  # A1111 and Forge back up before an update
    before = set(backups.iterdir()) if backups.is_dir() else set()
    moved = []
    for copy in our_copies(extensions):
        parked.mkdir(parents=True, exist_ok=True)
        moved.append(copy.name)
        shutil.move(str(copy), str(parked / copy.name))
    try:
        yield installed
    finally:
        shutil.rmtree(installed, ignore_errors=True)
        for name in moved:
            shutil.move(str(parked / name), str(extensions / name))
        for path, data in saved.items():
            path.write_bytes(data)
        for path in set(backups.iterdir()) - before if backups.is_dir() else ():
            path.unlink()
