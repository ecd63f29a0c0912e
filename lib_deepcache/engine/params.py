"""DeepCache parameters: one validated, immutable object and its three wire formats.

The same object arrives from the UI (a positional list of control values), from API clients
(the same list, or one dict with named keys) and from pasted generation info (a text). Every
route ends in :class:`DeepCacheParams`, whose constructor validates, so a half-valid setting can
never reach the sampler: a bad value raises :class:`DeepCacheParamError` naming the field, the
value and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .defaults import auto_interval

SCHEDULES = ("uniform", "non-uniform", "adaptive")
MAX_INTERVAL = 1000
# interval 0 ("auto" in the API and the infotext): the loaded model's own default, chosen in
# docs/quality.md "Per-model defaults" (see :func:`.defaults.auto_interval`).
AUTO_INTERVAL = 0
# The deepest skip branch of any supported UNet (SD1.x/2.x: 12 input blocks, branches 0..11).
# SDXL has 9 input blocks; the session clamps to the UNet it hooks (see ``effective_depth``).
MAX_DEPTH = 11
# Passes shorter than this run uncached by default (docs/quality.md "Few steps").
DEFAULT_MIN_STEPS = 8
MAX_MIN_STEPS = 1000
_TWO_WORD_KEYS = {"max cached": "max_cached", "min steps": "min_steps"}

_TRUE_WORDS = {"true", "yes", "on", "1", "enabled"}
_FALSE_WORDS = {"false", "no", "off", "0", "disabled"}


class DeepCacheParamError(ValueError):
    """A parameter is missing, of the wrong type or out of range; the message names it."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"DeepCache: invalid {field}={value!r}; allowed: {allowed}")


def _as_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise DeepCacheParamError(field, value, "true or false")


def _as_number(field: str, value: Any, allowed: str) -> float | int:
    """A real number from a number or a numeric string; never from a bool."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise DeepCacheParamError(field, value, allowed) from None
    # bool is an int subclass: "interval": true must not silently mean 1.
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise DeepCacheParamError(field, value, allowed)
    return number


def _as_int(field: str, value: Any, low: int, high: int) -> int:
    allowed = f"an integer from {low} to {high}"
    number = _as_number(field, value, allowed)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise DeepCacheParamError(field, value, allowed)
    if not low <= int(number) <= high:
        raise DeepCacheParamError(field, value, allowed)
    return int(number)


def _as_interval(field: str, value: Any) -> int:
    """An interval from 1 to MAX_INTERVAL, or AUTO_INTERVAL from 0 or the word ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_INTERVAL
    try:
        return _as_int(field, value, AUTO_INTERVAL, MAX_INTERVAL)
    except DeepCacheParamError:
        allowed = f"an integer from 1 to {MAX_INTERVAL}, or 0 / auto (the model's default)"
        raise DeepCacheParamError(field, value, allowed) from None


def _as_fraction(
    field: str, value: Any, allowed: str = "a number from 0 to 1 (fraction of the executed steps)"
) -> float:
    number = float(_as_number(field, value, allowed))
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise DeepCacheParamError(field, value, allowed)
    return number


def _as_threshold(field: str, value: Any) -> float:
    allowed = "a number >= 0 (inf: refresh only after max_cached steps)"
    number = float(_as_number(field, value, allowed))
    if math.isnan(number) or number < 0:
        raise DeepCacheParamError(field, value, allowed)
    return number


def _as_schedule(field: str, value: Any) -> str:
    allowed = " or ".join(SCHEDULES)
    if not isinstance(value, str):
        raise DeepCacheParamError(field, value, allowed)
    name = re.sub(r"[\s_]+", "-", value.strip().lower())
    if name == "nonuniform":
        name = "non-uniform"
    if name not in SCHEDULES:
        raise DeepCacheParamError(field, value, allowed)
    return name


@dataclass(frozen=True)
class DeepCacheParams:
    """What the user asked for; the session derives everything else from it.

    ``interval`` is the number of denoising steps per full refresh (1 = never cache;
    :data:`AUTO_INTERVAL` = the UNet's own default, resolved by the session from its layout with
    :meth:`resolved`).
    ``depth`` is the paper's skip branch: 0 keeps only the outermost block pair (fastest).
    ``start``/``end`` bound, as fractions of the steps actually executed in a pass, the window in
    which cached steps may happen; outside it every step is full.
    ``threshold``/``max_cached`` drive the ``adaptive`` schedule: a step is cached while the
    accumulated relative L1 change of the depth-``d`` skip feature since the last refresh stays
    below ``threshold``, and at most ``max_cached`` steps in a row.
    ``forecast`` in [0, 1]: on a cached step, the deep feature is extrapolated from the last two
    full steps, ``F1 + forecast * (F1 - F0) * (t - t1) / (t1 - t0)`` (first order in the UNet's
    timestep); 0 holds the last feature as the paper does. Where a cached step runs no block (a
    transformer at depth 0) the session makes step 1 full too, so the forecast has two full
    steps from the start (``schedule.FORECAST_WARMUP``).
    ``min_steps``: a pass requested with fewer steps than this runs uncached and the report
    says so (0 = never off); :class:`~.generation.GenerationRun` applies it per pass (a bare
    :class:`~.session.DeepCacheSession` caches whatever it is given). The default comes from
    docs/quality.md "Few steps".
    """

    enabled: bool = False
    interval: int = AUTO_INTERVAL
    depth: int = 0
    start: float = 0.0
    end: float = 1.0
    schedule: str = "uniform"
    threshold: float = 0.15
    max_cached: int = 4
    forecast: float = 0.0
    min_steps: int = DEFAULT_MIN_STEPS

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "enabled", _as_bool("enabled", self.enabled))
        set_(self, "interval", _as_interval("interval", self.interval))
        set_(self, "depth", _as_int("depth", self.depth, 0, MAX_DEPTH))
        set_(self, "start", _as_fraction("start", self.start))
        set_(self, "end", _as_fraction("end", self.end))
        set_(self, "schedule", _as_schedule("schedule", self.schedule))
        set_(self, "threshold", _as_threshold("threshold", self.threshold))
        set_(self, "max_cached", _as_int("max_cached", self.max_cached, 1, MAX_INTERVAL))
        set_(
            self,
            "forecast",
            _as_fraction("forecast", self.forecast, "a number from 0 (hold) to 1 (first order)"),
        )
        set_(self, "min_steps", _as_int("min_steps", self.min_steps, 0, MAX_MIN_STEPS))
        if self.start >= self.end:
            raise DeepCacheParamError("start", self.start, f"a fraction below end ({self.end:g})")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The positional order shared by the UI controls and API ``args`` lists."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> DeepCacheParams:
        """Parse the positional form; a single dict element is the named form.

        Missing trailing values take their defaults (older API clients send fewer). Extra values
        are refused rather than ignored, since they mean the client expects another order.
        """
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise DeepCacheParamError("args", args, "a list of values or one object")
        if len(args) == 1 and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        names = cls.field_names()
        if len(args) > len(names):
            raise DeepCacheParamError(
                "args", list(args), f"at most {len(names)} values in the order {', '.join(names)}"
            )
        return cls.from_dict(dict(zip(names, args, strict=False)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeepCacheParams:
        """Parse the named form; unknown keys are refused so a typo never goes unnoticed."""
        if not isinstance(values, Mapping):
            raise DeepCacheParamError("args", values, "an object with named keys")
        names = cls.field_names()
        unknown = sorted(str(k) for k in values if k not in names)
        if unknown:
            raise DeepCacheParamError(unknown[0], values[unknown[0]], f"keys {', '.join(names)}")
        for name, value in values.items():
            if value is None:
                raise DeepCacheParamError(name, value, "a value (null is not allowed)")
        return cls(**dict(values))

    def resolved(self, family: str, num_blocks: int) -> DeepCacheParams:
        """These parameters on a model of this layout family and block count (UNets: input
        blocks): ``auto`` made a number."""
        if self.interval != AUTO_INTERVAL:
            return self
        return replace(self, interval=auto_interval(family, num_blocks))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def interval_infotext(self, ran: Sequence[int] = ()) -> str:
        """``3``; ``auto`` before a UNet resolved it; ``2 (auto)`` with the interval(s) it ran
        at (``2/3 (auto)`` when a refiner of another layout took over)."""
        if self.interval != AUTO_INTERVAL:
            return str(self.interval)
        if not ran:
            return "auto"
        return "/".join(str(i) for i in dict.fromkeys(ran)) + " (auto)"

    def to_infotext(self, ran_intervals: Sequence[int] = ()) -> str:
        """The human-readable value written under the ``DeepCache`` infotext key;
        ``ran_intervals``: what ``auto`` resolved to in the passes that ran."""
        text = (
            f"interval {self.interval_infotext(ran_intervals)}, depth {self.depth}, "
            f"start {_percent(self.start)}, end {_percent(self.end)}, {self.schedule}"
        )
        if self.schedule == "adaptive":
            text += f", threshold {self.threshold:g}, max cached {self.max_cached}"
        if self.forecast:
            text += f", forecast {self.forecast:g}"
        if self.min_steps:
            text += f", min steps {self.min_steps}"
        return text

    @classmethod
    def from_infotext(cls, text: str) -> DeepCacheParams:
        """Parse :meth:`to_infotext` output; enabled, since infotext is only written then."""
        if not isinstance(text, str):
            raise DeepCacheParamError("infotext", text, "a text like 'interval 3, depth 0, ...'")
        # an infotext without "min steps" was made with the switch off (or before it existed)
        values: dict[str, Any] = {"enabled": True, "min_steps": 0}
        for part in (p.strip() for p in text.strip().strip('"').split(",")):
            if not part:
                continue
            lowered = part.lower()
            two_words = next((k for k in _TWO_WORD_KEYS if lowered.startswith(k + " ")), None)
            if two_words is not None:
                values[_TWO_WORD_KEYS[two_words]] = part[len(two_words) :].strip()
                continue
            key, _, raw = part.partition(" ")
            key = key.lower()
            if key == "interval" and raw.strip().lower().endswith("(auto)"):
                values[key] = AUTO_INTERVAL  # what auto ran at is a record, not a setting
            elif key in ("interval", "depth", "threshold", "forecast"):
                values[key] = raw.strip()
            elif key in ("start", "end"):
                raw = raw.strip()
                if not raw.endswith("%"):
                    raise DeepCacheParamError(key, raw, "a percentage like 40%")
                try:
                    values[key] = float(raw[:-1]) / 100.0
                except ValueError:
                    raise DeepCacheParamError(key, raw, "a percentage like 40%") from None
            elif not raw:
                values["schedule"] = key
            else:
                raise DeepCacheParamError(
                    "infotext", part, "interval, depth, start, end, schedule, forecast, min steps"
                )
        return cls(**values)


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 2):g}%"


def effective_depth(depth: int, num_blocks: int) -> int:
    """Clamp the requested branch to the UNet at hand (SDXL has 9 input blocks, not 12)."""
    return max(0, min(depth, num_blocks - 1))
