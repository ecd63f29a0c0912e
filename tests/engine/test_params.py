"""Parameters: one validated object from positional args, named args and infotext."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib_deepcache.engine.params import AUTO_INTERVAL, DeepCacheParamError, DeepCacheParams


def test_defaults_are_off_and_the_models_own_interval():
    params = DeepCacheParams()
    assert (params.enabled, params.interval, params.depth) == (False, AUTO_INTERVAL, 0)
    assert (params.start, params.end, params.schedule) == (0.0, 1.0, "uniform")
    assert (params.threshold, params.max_cached) == (0.15, 4)


def test_positional_order_is_documented_order():
    assert DeepCacheParams.field_names() == (
        "enabled",
        "interval",
        "depth",
        "start",
        "end",
        "schedule",
        "threshold",
        "max_cached",
        "forecast",
        "min_steps",
    )
    params = DeepCacheParams.from_args([True, 5, 2, 0.1, 0.9, "non-uniform"])
    assert params == DeepCacheParams(True, 5, 2, 0.1, 0.9, "non-uniform")


def test_short_positional_list_takes_defaults():
    assert DeepCacheParams.from_args([True, 4]) == DeepCacheParams(enabled=True, interval=4)


def test_single_dict_argument_is_the_named_form():
    params = DeepCacheParams.from_args([{"enabled": True, "depth": 3, "schedule": "Non_Uniform"}])
    assert params == DeepCacheParams(enabled=True, depth=3, schedule="non-uniform")


def test_json_style_values_are_accepted():
    params = DeepCacheParams.from_dict({"enabled": "true", "interval": 3.0, "end": "0.5"})
    assert params == DeepCacheParams(enabled=True, interval=3, end=0.5)


@pytest.mark.parametrize(
    ("values", "field", "allowed"),
    [
        ({"interval": -1}, "interval", "1 to 1000, or 0 / auto"),
        ({"interval": 1001}, "interval", "1 to 1000, or 0 / auto"),
        ({"interval": "automatic"}, "interval", "1 to 1000, or 0 / auto"),
        ({"interval": 2.5}, "interval", "integer"),
        ({"interval": True}, "interval", "integer"),
        ({"interval": "three"}, "interval", "integer"),
        ({"interval": math.nan}, "interval", "integer"),
        ({"depth": -1}, "depth", "0 to 11"),  # README: depth 0-11
        ({"depth": 12}, "depth", "0 to 11"),
        ({"start": 1.5}, "start", "0 to 1"),
        ({"end": math.inf}, "end", "0 to 1"),
        ({"start": 0.6, "end": 0.5}, "start", "below end"),
        ({"schedule": "cosine"}, "schedule", "uniform or non-uniform or adaptive"),
        ({"threshold": -0.5}, "threshold", ">= 0"),
        ({"threshold": math.nan}, "threshold", ">= 0"),
        ({"max_cached": 0}, "max_cached", "1 to 1000"),
        ({"forecast": 1.5}, "forecast", "0 (hold) to 1 (first order)"),
        ({"forecast": -0.1}, "forecast", "0 (hold) to 1 (first order)"),
        ({"min_steps": -1}, "min_steps", "0 to 1000"),
        ({"min_steps": 1001}, "min_steps", "0 to 1000"),
        ({"min_steps": 2.5}, "min_steps", "integer"),
        ({"enabled": "maybe"}, "enabled", "true or false"),
        ({"enabled": None}, "enabled", "null is not allowed"),
        ({"intervall": 3}, "intervall", "keys enabled, interval"),
    ],
)
def test_bad_values_name_the_field_value_and_range(values, field, allowed):
    with pytest.raises(DeepCacheParamError) as info:
        DeepCacheParams.from_dict(values)
    assert info.value.field == field
    assert allowed in str(info.value)
    assert field in str(info.value)


def test_too_many_positional_values_are_refused():
    with pytest.raises(DeepCacheParamError, match="at most 10 values"):
        DeepCacheParams.from_args([True, 3, 0, 0, 1, "uniform", 0.2, 4, 0.5, 10, "extra"])


@pytest.mark.parametrize(
    ("params", "text"),
    [
        (
            DeepCacheParams(True, 4, 2, 0.1, 0.85, "non-uniform", min_steps=0),
            "interval 4, depth 2, start 10%, end 85%, non-uniform",
        ),
        (
            DeepCacheParams(
                True, 3, schedule="adaptive", threshold=0.25, max_cached=5, min_steps=0
            ),
            "interval 3, depth 0, start 0%, end 100%, adaptive, threshold 0.25, max cached 5",
        ),
        (
            DeepCacheParams(True, 5, 1, forecast=0.75, min_steps=0),
            "interval 5, depth 1, start 0%, end 100%, uniform, forecast 0.75",
        ),
        (
            DeepCacheParams(True, 3, 0, min_steps=10),
            "interval 3, depth 0, start 0%, end 100%, uniform, min steps 10",
        ),
        (
            DeepCacheParams(True, min_steps=8),
            "interval auto, depth 0, start 0%, end 100%, uniform, min steps 8",
        ),
    ],
    ids=["non-uniform", "adaptive", "forecast", "min-steps", "auto"],
)
def test_infotext_round_trip(params, text):
    assert params.to_infotext() == text
    assert DeepCacheParams.from_infotext(text) == params
    assert DeepCacheParams.from_infotext(f'"{text}"') == params


@pytest.mark.parametrize("value", [0, "0", "auto", " Auto ", 0.0])
def test_interval_zero_or_auto_means_the_models_own(value):
    assert DeepCacheParams(True, value).interval == AUTO_INTERVAL


@pytest.mark.parametrize(
    ("family", "num_blocks", "interval"),
    # docs/quality.md "Per-model defaults": SD1.x/2.x (12 input blocks) 3, SDXL (9) 2; the
    # SDXL refiner has 12 input blocks, the SD1.x layout; the diffusers UNet the same; the
    # transformers 2 whatever their block count
    [
        ("ldm", 12, 3),
        ("ldm", 9, 2),
        ("diffusers", 9, 2),
        ("flux", 57, 2),
        ("chroma", 6, 2),
        ("sd3", 24, 2),
    ],
)
def test_auto_resolves_per_layout_and_leaves_a_number_alone(family, num_blocks, interval):
    auto = DeepCacheParams(True, "auto", 1, forecast=0.5)
    expected = DeepCacheParams(True, interval, 1, forecast=0.5)
    assert auto.resolved(family, num_blocks) == expected
    assert DeepCacheParams(True, 4).resolved(family, num_blocks).interval == 4


@pytest.mark.parametrize(
    ("ran", "written"),
    [
        ((), "interval auto"),
        ((2,), "interval 2 (auto)"),
        ((2, 2), "interval 2 (auto)"),
        ((2, 3), "interval 2/3 (auto)"),
    ],
)
def test_the_infotext_of_auto_says_what_ran_and_pastes_back_auto(ran, written):
    params = DeepCacheParams(True, "auto", min_steps=0)
    text = params.to_infotext(ran)
    assert text == f"{written}, depth 0, start 0%, end 100%, uniform"
    assert DeepCacheParams.from_infotext(text) == params
    # a number is a number, whatever ran
    assert DeepCacheParams(True, 4).to_infotext((2,)).startswith("interval 4, ")


@pytest.mark.parametrize(
    "text",
    ["interval x, depth 0", "interval 3, start 10", "interval 3, colour blue", "interval 3, lol"],
)
def test_bad_infotext_raises_the_param_error(text):
    with pytest.raises(DeepCacheParamError):
        DeepCacheParams.from_infotext(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(st.lists(json_values, max_size=8))
def test_positional_parser_raises_only_its_own_error(args):
    with contextlib.suppress(DeepCacheParamError):
        DeepCacheParams.from_args(args)


@given(st.dictionaries(st.sampled_from(DeepCacheParams.field_names()), json_values))
def test_named_parser_raises_only_its_own_error(values):
    with contextlib.suppress(DeepCacheParamError):
        DeepCacheParams.from_dict(values)


@given(st.text(max_size=60))
def test_infotext_parser_raises_only_its_own_error(text):
    with contextlib.suppress(DeepCacheParamError):
        DeepCacheParams.from_infotext(text)
