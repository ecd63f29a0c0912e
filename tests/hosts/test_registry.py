"""The host adapter is picked by the model object the WebUI samples with."""

from __future__ import annotations

import types

import pytest
import torch

from lib_deepcache.engine.generation import GenerationRun
from lib_deepcache.engine.layout import UnsupportedUNetError
from lib_deepcache.hosts.a1111 import A1111
from lib_deepcache.hosts.base import Unsupported
from lib_deepcache.hosts.forge import Forge
from lib_deepcache.hosts.registry import adapter_for
from lib_deepcache.hosts.sdnext import SdNext

NS = types.SimpleNamespace


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # Forge's model has both forge_objects and an ldm model: Forge wins
        (NS(forge_objects=NS(unet=None), model=NS(diffusion_model=None)), Forge),
        (NS(model=NS(diffusion_model=torch.nn.Identity())), A1111),
        (NS(unet=torch.nn.Identity()), SdNext),
        (NS(unet="not a module"), Unsupported),
        (object(), Unsupported),
    ],
)
def test_the_adapter_follows_the_model_object(model, expected):
    assert type(adapter_for(model)) is expected


def test_an_unknown_model_is_refused_by_name_at_the_first_hook():
    class StrangeModel:
        pass

    with pytest.raises(UnsupportedUNetError, match="StrangeModel is not a model of AUTOMATIC1111"):
        adapter_for(StrangeModel()).on_batch(GenerationRun(), NS())
