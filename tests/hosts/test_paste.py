"""Pasting an infotext back (PNG Info's *Send to txt2img*, the paste button) when its DeepCache
keys are malformed: the defaults, said once, and never an exception (SD.Next calls the readers
unguarded: one exception loses the whole paste). Expectations are written out by hand."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_deepcache.engine.params import DeepCacheParams
from lib_deepcache.hosts import ui
from lib_deepcache.hosts.script_args import ARG_NAMES, ScriptArgs, pasted

DEFAULTS = [False, 0, 0, 0.0, 1.0, "uniform", True, 2, 0, 0.15, 4, 0.0, 8]

MALFORMED = {
    "cut in the middle": {"DeepCache": "interval 3, depth 0, sta"},
    "cut inside a percentage": {"DeepCache": "interval 3, depth 0, start 0%, end 1"},
    "unknown words": {"DeepCache": "interval 3, turbo mode, depth 0"},
    "unknown schedule": {"DeepCache": "interval 3, depth 0, sometimes"},
    "huge interval": {"DeepCache": "interval 99999999999999999999, depth 0"},
    "huge depth": {"DeepCache": "interval 3, depth 1e400"},
    "huge start": {"DeepCache": "interval 3, start 1e400%"},
    "infinite threshold": {"DeepCache": "interval 3, adaptive, threshold 1e999"},
    "not a number": {"DeepCache": "interval three"},
    "cut hires": {"DeepCache": "interval 3", "DeepCache hires": "interval 2, dep"},
    "huge hires": {"DeepCache": "interval 3", "DeepCache hires": "interval 5000, depth 0"},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_infotext_pastes_the_defaults_and_says_why(case):
    fields = MALFORMED[case]
    args, problem = pasted(fields)
    assert args.to_list() == DEFAULTS
    assert problem is not None
    assert problem.startswith("DeepCache: cannot paste ")
    assert problem.endswith("pasted the defaults (DeepCache off)")
    assert fields["DeepCache"] in problem  # the user sees what could not be read


def test_a_good_infotext_pastes_its_values_and_says_nothing():
    fields = {
        "DeepCache": "interval 4, depth 1, start 10%, end 90%, non-uniform, min steps 8",
        "DeepCache hires": "interval 3, depth 2",
    }
    args, problem = pasted(fields)
    assert problem is None
    assert args.to_list() == [True, 4, 1, 0.1, 0.9, "non-uniform", True, 3, 2, 0.15, 4, 0.0, 8]
    # no DeepCache key: made without it, pasted off, nothing to say
    assert pasted({"Steps": "12"}) == (ScriptArgs.defaults(), None)


def test_the_readers_paste_the_defaults_and_the_console_says_it_once(caplog):
    readers = [ui._paste_value(name) for name in ARG_NAMES]
    with caplog.at_level(logging.WARNING, logger="deepcache"):
        values = [read(dict(MALFORMED["cut in the middle"])) for read in readers]
    assert values == DEFAULTS
    lines = [r.getMessage() for r in caplog.records if r.name == "deepcache"]
    assert len(lines) == 1, lines
    assert "interval 3, depth 0, sta" in lines[0] and "pasted the defaults" in lines[0]


INFOTEXT_CHARS = 'interval depth start end uniform adaptive 0123456789.,%e-+()"'


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["DeepCache", "DeepCache hires", "Steps"]),
        st.text(alphabet=INFOTEXT_CHARS, max_size=60) | st.text(max_size=30),
    )
)
def test_a_paste_never_raises_and_gives_values_the_page_can_hold(fields):
    args, problem = pasted(fields)
    assert isinstance(args, ScriptArgs)
    assert problem is None or problem.startswith("DeepCache: cannot paste")
    for value in args.to_list():
        assert value == value and value not in (float("inf"), float("-inf"))
    assert isinstance(args.first, DeepCacheParams)
