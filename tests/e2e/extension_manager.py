"""Each host's own extension manager, worked in its page: install from a URL, apply (and
restart), update from a newer commit, uninstall. The words are the hosts' own: A1111 and Forge
share one tab (``modules/ui_extensions.py`` of 1.10), SD.Next has its own."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .hostctl import HostServer
from .install_flow import FOLDER, Launcher
from .page import APP, click_button, fill_box, leave_page, open_page, wait_for

TIMEOUT_S = 300


@dataclass(frozen=True)
class Manager:
    install_tab: str
    url_label: str
    installed: str  # the install's answer begins so
    manage_tab: str
    apply: str
    update: str


A1111 = Manager(
    "Install from URL",
    "URL for extension's git repository",
    "Installed into",
    "Installed",
    # "Apply and quit" without a launcher's restart loop (SD_WEBUI_RESTART)
    "Apply and restart UI",
    "Check for updates",
)
MANAGERS = {
    "a1111": A1111,
    "forge": A1111,
    "sdnext": Manager(
        "Manual install",
        "Extension GIT repository URL",
        "Extension installed",
        "Manage extensions",
        "Apply changes",
        "Update all installed",
    ),
}
RESULT = {"a1111": "#extension_install_result", "forge": "#extension_install_result"}
ROW = f"{APP}.querySelector('#extensions input[name=\"enable_{FOLDER}\"]')"


def open_extensions(driver: Any, host: HostServer, tab: str) -> None:
    click_button(driver, "Extensions", "#tabs")
    click_button(driver, tab, "#tabs_extensions")


def install_from_url(driver: Any, host: HostServer, url: str) -> str:
    """Extensions → Install from URL (SD.Next: Manual install), paste, Install; the answer."""
    manager = MANAGERS[host.name]
    open_page(driver, host.url + "/")
    open_extensions(driver, host, manager.install_tab)
    fill_box(driver, manager.url_label, url, "#tabs_extensions")
    click_button(driver, "Install", "#tabs_extensions")
    result = RESULT.get(host.name, "#extension_info")
    answer = f"[...{APP}.querySelectorAll('{result}')].map(e => e.innerText).join(' ')"
    return wait_for(
        driver,
        f"/installed|error|exists|invalid/i.test({answer}) && {answer}",
        TIMEOUT_S,
        "the install's answer",
        f"install-{host.name}-answer",
    )


def apply_and_restart(driver: Any, host: HostServer, launcher: Launcher) -> str:
    """Installed (SD.Next: Manage extensions) → Apply; the host's restart. The route taken."""
    manager = MANAGERS[host.name]
    open_extensions(driver, host, manager.manage_tab)
    wait_for(driver, ROW, TIMEOUT_S, f"{FOLDER} in the installed list", f"install-{host.name}")
    pid, mark = host.pid(), host.log_mark()
    assert pid is not None
    click_button(driver, manager.apply, "#tabs_extensions")
    # the page polls the host after Apply: leave it only once the click has reached the host
    wait_for_log_or_exit(host, pid, mark)
    leave_page(driver)
    return launcher.await_restart(pid, mark)


def wait_for_log_or_exit(host: HostServer, pid: int, mark: int) -> None:
    said = "Server will restart" if host.name == "sdnext" else None
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if host.pid() != pid or (said and said in host.log_since(mark)):
            return
        time.sleep(0.5)
    raise AssertionError(f"{host.name}: Apply did not stop or restart the host")


def check_for_updates(driver: Any, host: HostServer) -> None:
    """A1111/Forge: *Check for updates* marks ours "new commits" (ticked for update by Apply);
    SD.Next: *Update all installed* fetches and resets every extension with a remote."""
    manager = MANAGERS[host.name]
    open_page(driver, host.url + "/")
    open_extensions(driver, host, manager.manage_tab)
    wait_for(driver, ROW, TIMEOUT_S, f"{FOLDER} in the installed list", f"update-{host.name}")
    mark = host.log_mark()
    click_button(driver, manager.update, "#tabs_extensions")
    if host.name == "sdnext":
        said = f"Extensions updated: {FOLDER}"
        wait_for_text(host, mark, said)
        return
    ticked = f"{APP}.querySelector('#extensions input[name=\"update_{FOLDER}\"]')?.checked"
    wait_for(driver, ticked, TIMEOUT_S, "ours marked for update", f"update-{host.name}")


def wait_for_text(host: HostServer, mark: int, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while text not in " ".join(host.log_since(mark).split()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name} never logged {text!r}")
        time.sleep(0.5)


def uninstall_in_page(driver: Any, host: HostServer) -> None:
    """SD.Next's row button *uninstall* (A1111 1.10 and Forge have none: users remove the
    folder)."""
    open_extensions(driver, host, MANAGERS[host.name].manage_tab)
    wait_for(driver, ROW, TIMEOUT_S, f"{FOLDER} in the installed list", f"uninstall-{host.name}")
    mark = host.log_mark()
    clicked = driver.execute_script(
        f"""const row = {ROW}.closest('tr');
        const b = [...row.querySelectorAll('button')].find(b => b.innerText.trim() === 'uninstall');
        if (b) b.click();
        return !!b;"""
    )
    assert clicked, "no uninstall button in our row"
    wait_for_text(host, mark, "Extension uninstalled:")
