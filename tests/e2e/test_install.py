"""The install path as a user takes it (issue 23, part 1): in each host's page, headless
Chromium installs this repository from a git URL with the host's own extension manager, the
host restarts the way its launcher would, the accordion is there and generates with DeepCache;
then an update from a newer commit, then an uninstall.

The URL serves HEAD (committed files only) from a bare clone made by the test; the host clones
it into ``sd-webui-deepcache-from-url`` while the suite's working-tree copy is parked, and the
host is left as found. Oracles: git (the installed folder's commit), ``pip freeze`` of the
host's venv before and after, a probe that notes each ``install.py`` the host runs, the page's
infotext with counts worked out by hand, and the host's own plain image.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.e2e import extension_manager as manager
from tests.e2e.hostctl import HostServer
from tests.e2e.install_flow import GitSource, Launcher, git, host_left_as_found, pip_freeze
from tests.e2e.page import accordions_shown, generate_small, open_page, patient, tick_deepcache
from tests.e2e.payloads import base_payload, deepcache, max_abs_diff

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import HostPool

pytestmark = pytest.mark.e2e

# SD.Next's Manual install clones the URL and runs install.py (its log says so), but its Manage
# extensions list then shows only the extensions of its index (offline: its built-in one), so
# Apply, Update and Uninstall have no row for ours to act on (seen: 300 s without the row)
SDNEXT_LIST = "SD.Next's extension list never shows an extension installed from a URL offline"

DC_TEXT = 'DeepCache: "interval 3 (auto), depth 0, start 0%, end 100%, uniform, min steps 8"'
# The page's default sampler over 12 steps at interval 3 (auto): full at 0, 3, 6, 9 on A1111 and
# Forge; SD.Next's "Default" is this model's PNDM, whose step 1 runs twice and counts full
# (tests/e2e/test_bugs.py::test_sdnext_pndm_counts_its_steps): 5 full / 7 cached.
PAGE_COUNTS = {
    "a1111": "4 full / 8 cached",
    "forge": "4 full / 8 cached",
    "sdnext": "5 full / 7 cached",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed (tools/setup.sh)")
    driver = patient(start_chromium())
    yield driver
    driver.quit()


def scripts_titled_deepcache(host: HostServer) -> list[dict[str, Any]]:
    status, info = host.get("/sdapi/v1/script-info")
    assert status == 200 and isinstance(info, list), info
    return [s for s in info if str(s.get("name", "")).lower() == "deepcache"]


def install(browser: Any, host: HostServer, launcher: Launcher, source: GitSource) -> str:
    """Install from the URL and apply; the installed commit, the installer run, pip freeze."""
    installed = host.extensions_dir / manager.FOLDER
    frozen = pip_freeze(host)
    launcher.start()
    assert scripts_titled_deepcache(host) == []  # our copy is parked
    answer = manager.install_from_url(browser, host, source.url)
    assert answer.strip().startswith(manager.MANAGERS[host.name].installed), answer
    assert git("rev-parse", "HEAD", cwd=installed).strip() == source.head
    assert git("status", "--porcelain", cwd=installed) == ""  # the commit's files, no others
    runs = launcher.installer_runs()
    assert [run["script"] for run in runs] == [str(installed / "install.py")], runs
    assert Path(runs[0]["python"]).parent == host.target / "venv" / "bin", runs
    route = manager.apply_and_restart(browser, host, launcher)
    assert pip_freeze(host) == frozen, "install.py changed the host's environment"
    return route


def generates_from_the_page(browser: Any, host: HostServer) -> None:
    open_page(browser, host.url + "/")
    accordions_shown(browser, host.name)
    tick_deepcache(browser, host.name)
    info = generate_small(browser)
    assert DC_TEXT in info, info
    assert f"DeepCache steps: {PAGE_COUNTS[host.name]}" in info, info


def update(
    browser: Any, host: HostServer, launcher: Launcher, source: GitSource, scratch: Path
) -> str:
    """A newer commit pushed to the URL reaches the installed folder through the manager."""
    installed = host.extensions_dir / manager.FOLDER
    newer = source.push_newer_commit(scratch)
    manager.check_for_updates(browser, host)
    route = manager.apply_and_restart(browser, host, launcher)
    assert git("rev-parse", "HEAD", cwd=installed).strip() == newer
    assert (installed / "README.md").read_text().endswith("Updated by the e2e install test.\n")
    # the page first, as a user returns to it: in Forge a txt2img sent at once after this
    # restart answered 500 (IndexError, "list assignment index out of range", in Forge's script
    # args), the same request after the page had loaded 200 (seen; not diagnosed further)
    generates_from_the_page(browser, host)
    result = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3)))
    assert result.counts() == (4, 8), result.infotexts[0]
    return route


def uninstall(browser: Any, host: HostServer, launcher: Launcher) -> None:
    """SD.Next's uninstall button and Apply; A1111 and Forge: the folder removed, a new start."""
    installed = host.extensions_dir / manager.FOLDER
    if host.name == "sdnext":
        open_page(browser, host.url + "/")
        manager.uninstall_in_page(browser, host)
        manager.apply_and_restart(browser, host, launcher)
    else:
        launcher.stop()
        shutil.rmtree(installed)
        launcher.start()
    assert not installed.exists()


def test_install_update_and_uninstall_from_a_git_url(
    host_pool: HostPool, host_name: str, browser: Any, tmp_path: Path, record_property
) -> None:
    if host_name == "sdnext":
        pytest.skip(SDNEXT_LIST)
    host = host_pool.stopped(host_name)
    began = time.monotonic()
    source = GitSource(tmp_path)
    (tmp_path / "probe").mkdir()
    launcher = Launcher(host, tmp_path / "probe")
    try:
        with host_left_as_found(host):
            try:
                record_property("install_restart", install(browser, host, launcher, source))
                generates_from_the_page(browser, host)
                tabs = {s.get("is_img2img") for s in scripts_titled_deepcache(host)}
                assert tabs == {False, True}, tabs
                plain = host.txt2img(base_payload(host))
                route = update(browser, host, launcher, source, tmp_path / "scratch")
                record_property("update_restart", route)
                uninstall(browser, host, launcher)
                assert scripts_titled_deepcache(host) == []
                after = host.txt2img(base_payload(host))
                assert max_abs_diff(plain.images[0], after.images[0]) == 0
                assert "DeepCache" not in after.infotexts[0]
            finally:
                launcher.stop()
    finally:
        source.close()
    record_property("starts_s", [round(s, 1) for s in launcher.start_seconds])
    record_property("minutes", round((time.monotonic() - began) / 60, 2))
