"""Regional compilation finds the decoder layers of plain and peft-wrapped models and keeps their names."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from wenzhen.errors import WenzhenError
from wenzhen.train.performance import compile_decoder_layers, repeated_layers


def test_finds_the_decoder_layers_through_a_peft_wrapper(tiny_glm):
    peft_model = get_peft_model(tiny_glm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    layers = repeated_layers(peft_model)
    assert layers is tiny_glm.model.layers


def test_compiles_each_layer_in_place_without_renaming_weights(tiny_glm):
    names = list(tiny_glm.state_dict())
    assert compile_decoder_layers(tiny_glm) == 2
    assert all(layer._compiled_call_impl is not None for layer in tiny_glm.model.layers)
    assert list(tiny_glm.state_dict()) == names


def test_a_model_without_repeated_layers_is_refused_with_the_fix():
    with pytest.raises(WenzhenError, match=r"performance\.compile: false"):
        repeated_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
