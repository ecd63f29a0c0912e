"""Requests and answers: the images a test sends, the payloads, and one answered generation."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .oracles import parameters_line, parse_counts, parse_infotext_line, sampler_runs

if TYPE_CHECKING:
    from .hostctl import HostServer


# --------------------------------------------------------------------------- images
def decode_png(data: str) -> np.ndarray:
    """A base64 PNG (with or without a ``data:`` prefix) as a uint8 array (H, W[, C])."""
    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.array(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


def read_png(raw: bytes) -> tuple[np.ndarray, str]:
    """A PNG file's RGB pixels and its ``parameters`` text chunk (the WebUIs' infotext)."""
    with Image.open(io.BytesIO(raw)) as image:
        return np.array(image.convert("RGB")), str(image.info.get("parameters", ""))


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


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in levels (0-255)."""
    if a.shape != b.shape:
        raise AssertionError(f"image shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def white_square(size: int = 64) -> np.ndarray:
    """A control image: the middle half white, black around it (RGB)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return image


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


def latent_hires_2x() -> dict[str, Any]:
    """Hires fix at 2x with A1111's and Forge's latent upscaler, 8 hires steps (the default
    ``min_steps``: fewer would run uncached) at strength 0.5."""
    return {
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 8,
        "denoising_strength": 0.5,
    }


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
