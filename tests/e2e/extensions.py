"""A host's extension folders: our copy of the working tree, and the other "DeepCache"
extension parked out of the way or put back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .build import REPO_ROOT, HostError

# Written into every copy of this repository that we install, so that a later run can find and
# remove it whatever folder name it was installed under (the title-clash tests rename it).
OUR_MARKER = ".deepcache-e2e-installed"


def our_copies(extensions_dir: Path) -> list[Path]:
    """Folders in the extensions dir holding this repository (by marker or by layout)."""
    if not extensions_dir.is_dir():
        return []
    return sorted(
        path
        for path in extensions_dir.iterdir()
        if path.is_dir()
        and (
            (path / OUR_MARKER).is_file()
            or ((path / "lib_deepcache").is_dir() and (path / "scripts/deepcache.py").is_file())
        )
    )


def install_tree(extensions_dir: Path, folder_name: str) -> Path:
    """Copy the working tree (uncommitted files too) in as ``folder_name``; only one copy.

    Files are what ``git ls-files -co --exclude-standard`` lists, so ``.venv`` and caches stay
    out. Scripts load at start: restart the host afterwards.
    """
    for old in our_copies(extensions_dir):
        shutil.rmtree(old)
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode()
    dest = extensions_dir / folder_name
    if dest.exists():
        raise HostError(f"{dest} exists and is not ours; choose another folder")
    for rel in filter(None, listed.split("\0")):
        source = REPO_ROOT / rel
        if not source.is_file():  # deleted in the working tree but still tracked
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / rel)
    (dest / OUR_MARKER).write_text(f"copied from {REPO_ROOT} by tests/e2e\n")
    return dest


def place_other_extension(active: Path, parked: Path, present: bool) -> None:
    """Move the other extension's folder between ``parked`` and ``active``."""
    source, dest = (parked, active) if present else (active, parked)
    if dest.exists() and source.exists():
        raise HostError(f"both {active} and {parked} exist; remove one")
    if source.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(dest))
    if present and not active.is_dir():
        raise HostError(f"{active.name} is neither installed nor parked")
