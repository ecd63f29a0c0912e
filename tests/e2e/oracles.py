"""The e2e suite's oracles, written independently of the extension: the WebUIs' infotext format,
DeepCache's step counts as a user reads them, and the hosts' own progress bars (how many steps
each sampling loop really ran)."""

from __future__ import annotations

import json
import re
from typing import Any


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
    """``"4 full / 8 cached"`` -> ``(4, 8)``; two passes -> ``{"first pass": (4, 8), ...}``;
    a pass switched off by ``min_steps`` keeps its text: ``{"hires": "off (4 steps < 5)"}``."""
    text = unquote(text)
    if ";" not in text and not re.match(r"^\s*[a-z]", text):
        match = _COUNTS.match(text)
        if match is None:
            raise ValueError(f"not a DeepCache step count: {text!r}")
        return int(match[1]), int(match[2])
    passes: dict[str, Any] = {}
    for part in text.split(";"):
        match = re.match(
            r"^\s*([a-z][a-z ]*?)\s+(\d+\s+full\s*/\s*\d+\s+cached|off \(\d+ steps < \d+\))\s*$",
            part,
        )
        if match is None:
            raise ValueError(f"not a DeepCache pass count: {part!r} in {text!r}")
        if match[1] in passes:  # e.g. a pass begun twice (Forge calls its hook twice)
            raise ValueError(f"pass {match[1]!r} counted twice in {text!r}")
        passes[match[1]] = match[2] if match[2].startswith("off") else parse_counts(match[2])
    return passes


# --------------------------------------------------------------------------- log oracle
# A sampling loop's progress bar starts at "0/N": tqdm's "| 0/12 [" (A1111, Forge) and SD.Next's
# "0% 0/12 00:00". The job-wide "Total progress" bar of A1111/Forge is not a sampling loop, nor
# are the bars of a model load ("Loading pipeline components...", "Loading weights": SD.Next
# loading the checkpoint a request's override_settings names).
_BAR = re.compile(r"\s(\d+)/(\d+)\s")


def sampler_runs(log_text: str) -> list[int]:
    """The step count of each sampling loop a log slice shows, in order (host-independent).

    This is the hosts' own account of how many steps each pass executed, the oracle that the
    extension's "DeepCache steps" counts are checked against. A bar drawn again at 0 before its
    first step ends (SD.Next's bar refreshes on a busy machine) is the same loop.
    """
    runs: list[int] = []
    previous: tuple[str, str] | None = None
    for segment in re.split(r"[\r\n]", log_text):
        if "Total progress" in segment or "Loading" in segment:
            continue
        for done, total in _BAR.findall(segment + " "):
            if done == "0" and previous != (done, total):
                runs.append(int(total))
            previous = (done, total)
    return runs


def generation_ran(log_text: str) -> bool:
    """Whether a log slice shows any sampling (a progress bar, or SD.Next's "Processed:")."""
    return bool(sampler_runs(log_text)) or "Processed: images=" in log_text
