"""What the WebUI extension receives: the first-pass parameters and the hires-fix pass's own.

The UI controls, the API's positional ``args`` and the API's single-object form all map to
:class:`ScriptArgs`. The hires pass shares the first pass's window and schedule (with the
adaptive schedule's threshold and max cached steps, the forecast and the few-step switch-off)
but has its own switch, interval and depth, because its few steps on an upscaled latent
tolerate different caching. Infotext keys and X/Y/Z overrides are defined here too, so that
the host adapter only moves values around.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..engine.params import DeepCacheParamError, DeepCacheParams

# Positional order of the UI controls, and so of the API's "args" list.
ARG_NAMES = (
    "enabled",
    "interval",
    "depth",
    "start",
    "end",
    "schedule",
    "hires_enabled",
    "hires_interval",
    "hires_depth",
    "threshold",
    "max_cached",
    "forecast",
    "min_steps",
)
HIRES_KEYS = {"hires_enabled": "enabled", "hires_interval": "interval", "hires_depth": "depth"}
# The hires pass takes these from the first pass.
SHARED_WITH_HIRES = (
    "start", "end", "schedule", "threshold", "max_cached", "forecast", "min_steps",
)  # fmt: skip

INFOTEXT_KEY = "DeepCache"
INFOTEXT_HIRES_KEY = "DeepCache hires"
INFOTEXT_STEPS_KEY = "DeepCache steps"
# pass names, in the counts' infotext and for the intervals ``auto`` ran at
FIRST_PASS = "first pass"
HIRES_PASS = "hires"


@dataclass(frozen=True)
class ScriptArgs:
    first: DeepCacheParams
    hires: DeepCacheParams

    @property
    def enabled(self) -> bool:
        return self.first.enabled

    @classmethod
    def defaults(cls) -> ScriptArgs:
        """Off; once enabled, the hires pass is cached too, more gently (interval 2)."""
        return cls(DeepCacheParams(), DeepCacheParams(enabled=True, interval=2))

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> ScriptArgs:
        """Parse the script's args as the host passes them.

        ``args[0]`` a dict: the named form (the host fills the remaining slots with UI defaults,
        which are then ignored). Otherwise the positional form in :data:`ARG_NAMES` order;
        missing trailing values keep their defaults, extra values are refused.
        """
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise DeepCacheParamError("args", args, "a list of values or one object")
        if args and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        if len(args) > len(ARG_NAMES):
            raise DeepCacheParamError(
                "args", list(args), f"at most {len(ARG_NAMES)} values: {', '.join(ARG_NAMES)}"
            )
        return cls.from_dict(dict(zip(ARG_NAMES, args, strict=False)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScriptArgs:
        unknown = sorted(str(k) for k in values if k not in ARG_NAMES and k != "hires")
        if unknown:
            raise DeepCacheParamError(
                unknown[0], values[unknown[0]], f"keys {', '.join(ARG_NAMES)}"
            )
        flat = dict(values)
        nested = flat.pop("hires", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise DeepCacheParamError(
                    "hires", nested, "an object with enabled, interval, depth"
                )
            extra = sorted(str(k) for k in nested if k not in HIRES_KEYS.values())
            if extra:
                raise DeepCacheParamError(
                    f"hires.{extra[0]}", nested[extra[0]], "enabled, interval, depth"
                )
            flat.update({f"hires_{k}": v for k, v in nested.items()})
        first_values = {k: v for k, v in flat.items() if k not in HIRES_KEYS}
        first = DeepCacheParams.from_dict(first_values)
        base = cls.defaults().hires
        own = {field: flat.get(name, getattr(base, field)) for name, field in HIRES_KEYS.items()}
        try:
            hires = DeepCacheParams(**own, **_shared_with_hires(first))
        except DeepCacheParamError as error:
            raise DeepCacheParamError(f"hires_{error.field}", error.value, error.allowed) from None
        return cls(first, hires)

    def hires_pass(self) -> DeepCacheParams:
        """The parameters the hires-fix pass runs with (off unless both switches are on)."""
        return replace(self.hires, enabled=self.first.enabled and self.hires.enabled)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ScriptArgs:
        """Apply X/Y/Z cell values (named like :data:`ARG_NAMES`), validated like any input."""
        if not overrides:
            return self
        values = {**self.to_dict(), **overrides}
        return ScriptArgs.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        first = self.first.to_dict()
        return {
            **first,
            "hires_enabled": self.hires.enabled,
            "hires_interval": self.hires.interval,
            "hires_depth": self.hires.depth,
        }

    def to_list(self) -> list[Any]:
        values = self.to_dict()
        return [values[name] for name in ARG_NAMES]

    # ----------------------------------------------------------------- infotext
    def infotext(
        self, hires_fix: bool, ran_intervals: Mapping[str, Sequence[int]] | None = None
    ) -> dict[str, str]:
        """Keys for the generation info; nothing at all when DeepCache is off.
        ``ran_intervals``: per pass name (``first pass``, ``hires``), what an ``auto`` interval
        ran at; written once the passes ran, so the infotext says ``interval 2 (auto)``."""
        if not self.enabled:
            return {}
        ran = ran_intervals or {}
        text = {INFOTEXT_KEY: self.first.to_infotext(ran.get(FIRST_PASS, ()))}
        if hires_fix:
            hires = self.hires_pass()
            interval = hires.interval_infotext(ran.get(HIRES_PASS, ()))
            text[INFOTEXT_HIRES_KEY] = (
                f"interval {interval}, depth {hires.depth}" if hires.enabled else "off"
            )
        return text

    @classmethod
    def from_infotext(cls, fields: Mapping[str, str]) -> ScriptArgs:
        """Rebuild the controls from parsed generation info (absent key: DeepCache was off)."""
        text = fields.get(INFOTEXT_KEY)
        if text is None:
            return cls.defaults()
        first = DeepCacheParams.from_infotext(str(text))
        hires_text = fields.get(INFOTEXT_HIRES_KEY)
        if hires_text is None:  # no hires fix in that generation: keep the default
            hires = cls.defaults().hires
        elif str(hires_text).strip().strip('"') == "off":
            hires = replace(cls.defaults().hires, enabled=False)
        else:
            parsed = DeepCacheParams.from_infotext(str(hires_text))
            hires = DeepCacheParams(enabled=True, interval=parsed.interval, depth=parsed.depth)
        return cls(first, replace(hires, **_shared_with_hires(first)))


def pasted(fields: Mapping[str, Any]) -> tuple[ScriptArgs, str | None]:
    """What a paste (PNG Info's *Send to txt2img*, the paste button) restores, and why not.

    The infotext's settings; or, when its DeepCache keys cannot be read (a text cut in the
    middle, unknown words, numbers out of range or not finite, which the page's JSON cannot
    carry), the defaults and one sentence saying so, for the page to show once. It never raises:
    SD.Next calls the paste readers unguarded, and one exception loses the whole paste.
    """
    try:
        args = ScriptArgs.from_infotext(fields)
        _refuse_non_finite(args)
    except DeepCacheParamError as error:
        written = {key: fields[key] for key in (INFOTEXT_KEY, INFOTEXT_HIRES_KEY) if key in fields}
        return ScriptArgs.defaults(), (
            f"DeepCache: cannot paste {written}: {error}; pasted the defaults (DeepCache off)"
        )
    return args, None


def _refuse_non_finite(args: ScriptArgs) -> None:
    for field, value in args.to_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DeepCacheParamError(field, value, "a finite number")


def _shared_with_hires(first: DeepCacheParams) -> dict[str, Any]:
    return {name: getattr(first, name) for name in SHARED_WITH_HIRES}
