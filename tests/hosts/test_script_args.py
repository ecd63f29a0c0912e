"""The extension's arguments: first pass + hires pass, from UI/API/infotext/X/Y/Z."""

from __future__ import annotations

import pytest

from lib_deepcache.engine.params import DeepCacheParamError, DeepCacheParams
from lib_deepcache.hosts.script_args import ARG_NAMES, ScriptArgs


def test_defaults_are_off_with_a_gentler_hires_pass():
    args = ScriptArgs.defaults()
    assert not args.enabled
    assert args.hires.enabled and args.hires.interval == 2
    assert not args.hires_pass().enabled, "hires never caches while DeepCache is off"


def test_positional_and_named_forms_agree():
    values = [True, 4, 1, 0.1, 0.9, "non-uniform", False, 3, 2, 0.3, 5, 0.75, 8]
    positional = ScriptArgs.from_args(values)
    named = ScriptArgs.from_args([dict(zip(ARG_NAMES, values, strict=True)), "ignored", 7])
    nested = ScriptArgs.from_args(
        [
            {
                **dict(zip(ARG_NAMES[:6], values, strict=False)),
                "hires": {"enabled": False, "interval": 3, "depth": 2},
                "threshold": 0.3,
                "max_cached": 5,
                "forecast": 0.75,
                "min_steps": 8,
            }
        ]
    )
    assert positional == named == nested
    assert positional.to_list() == values


def test_hires_pass_shares_window_and_schedule():
    args = ScriptArgs.from_args([True, 3, 0, 0.2, 0.7, "non-uniform", True, 2, 1])
    hires = args.hires_pass()
    assert (hires.start, hires.end, hires.schedule) == (0.2, 0.7, "non-uniform")
    assert (hires.enabled, hires.interval, hires.depth) == (True, 2, 1)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([True, 3, 0, 0, 1, "uniform", True, -1], "hires_interval"),
        ([{"hires": {"depth": 20}}], "hires_depth"),
        ([{"hires": {"speed": 1}}], "hires.speed"),
        ([{"hires": 5}], "hires"),
        (list(range(14)), "args"),
    ],
)
def test_errors_name_the_field(args, field):
    with pytest.raises(DeepCacheParamError) as info:
        ScriptArgs.from_args(args)
    assert info.value.field == field


def test_overrides_are_validated():
    base = ScriptArgs.from_args([True])
    assert base.with_overrides({"interval": 5}).first.interval == 5
    assert base.with_overrides({}) is base
    with pytest.raises(DeepCacheParamError, match="depth"):
        base.with_overrides({"depth": 99})


def test_infotext_round_trip_with_and_without_hires():
    args = ScriptArgs.from_args([True, 4, 2, 0.1, 0.9, "non-uniform", True, 3, 1])
    assert ScriptArgs.from_infotext(args.infotext(hires_fix=True)) == args
    no_hires = ScriptArgs.from_infotext(args.infotext(hires_fix=False))
    assert no_hires.first == args.first
    assert no_hires.hires.interval == ScriptArgs.defaults().hires.interval
    off = ScriptArgs.from_args([True, 3, 0, 0, 1, "uniform", False])
    assert ScriptArgs.from_infotext(off.infotext(hires_fix=True)).hires.enabled is False


def test_disabled_writes_no_infotext_and_pastes_back_disabled():
    assert ScriptArgs.defaults().infotext(hires_fix=True) == {}
    assert ScriptArgs.from_infotext({}) == ScriptArgs.defaults()
    # no "min steps" in an infotext: made with the switch-off at 0, or before it existed
    assert ScriptArgs.from_infotext({"DeepCache": "interval 3"}).first == DeepCacheParams(
        True, 3, min_steps=0
    )
