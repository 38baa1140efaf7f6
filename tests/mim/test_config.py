import copy
import dataclasses
import json
from pathlib import Path

import pytest

from mim.config import (MotionConfig, RecipeConfig, config_from_dict, config_to_dict, get_config, load_config,
                        migrate_config, save_config)


def test_base_is_the_papers_setting():
    r = get_config("base").renderer
    assert (r.image_size, r.feature_channels, r.depth_layers, r.volume_size) == (256, 32, 16, 64)
    assert (r.regions, r.motion_dim, r.appearance_dim, r.eps) == (10, 768, 512, 1e-5)


def test_tiny_is_small():
    r = get_config("tiny").renderer
    assert r.image_size == 64 and r.motion_dim % 64 == 0


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    config = get_config("tiny")
    config.train.lr = 3e-4
    config.loss.perceptual_scales = (1.0, 0.5)
    path = str(tmp_path / f"c{suffix}")
    save_config(config, path)
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(config)
    assert again.loss.perceptual_scales == (1.0, 0.5)


def test_partial_file_fills_from_named_config(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "tiny", "train": {"steps_unused": 1}}))
    with pytest.raises(ValueError, match="train.steps_unused"):
        load_config(str(path))
    path.write_text(json.dumps({"name": "tiny", "renderer": {"regions": 3}}))
    config = load_config(str(path))
    assert config.renderer.regions == 3 and config.renderer.image_size == 64


@pytest.mark.parametrize("update, match", [
    ({"renderer": {"regions": "ten"}}, "renderer.regions must be an integer"),
    ({"renderer": {"learn_beta": 1}}, "renderer.learn_beta must be true or false"),
    ({"renderer": {"motion_dim": 100}}, "motion_dim must be a multiple of 64"),
    ({"renderer": {"image_size": 96, "volume_size": 32}}, "power of two"),
    ({"renderer": {"padding_mode": "reflect"}}, "padding_mode"),
    ({"loss": {"gan_kind": "wgan"}}, "gan_kind"),
    ({"motion": {"prediction": "x0"}}, "motion.prediction must be one of eps, v"),
    ({"recipe": {"name": "lips"}}, "recipe.name must be one of paper, mouth, custom"),
    ({"recipe": {"alpha_mouth": 1.0}}, r"recipe.name is 'paper' .* sets recipe.alpha_mouth"),
    ({"recipe": {"name": "custom", "freeze": ["decoder", "warp"]}}, "recipe.freeze must name distinct"),
    ({"recipe": {"name": "custom", "mouth_crop": 4}}, r"recipe.mouth_crop must be in \[8, 4096\]"),
    ({"recipe": {"name": "custom", "alpha_mouth_open": -1.0}}, "recipe.alpha_mouth_open must be >= 0"),
    ({"recipe": {"decoder_motion_film": 1}}, "recipe.decoder_motion_film must be true or false"),
    ({"bogus": 1}, "unknown config key"),
])
def test_bad_values_are_named(update, match):
    data = config_to_dict(get_config("tiny"))
    data.update(update) if "bogus" in update else None
    for section, values in update.items():
        if isinstance(values, dict):
            data[section].update(values)
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


def test_presets_predict_v_and_a_config_without_the_field_keeps_eps():
    assert MotionConfig().prediction == "v"
    assert get_config("tiny").motion.prediction == get_config("base").motion.prediction == "v"
    data = config_to_dict(get_config("tiny"))
    del data["motion"]["prediction"]      # a checkpoint written before the field existed
    assert config_from_dict(data).motion.prediction == "eps"
    # a partial file still takes the preset's value
    assert config_from_dict({"name": "tiny", "motion": {"window": 30}}).motion.prediction == "v"


def test_unknown_name_or_missing_file():
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        load_config("huge")
    with pytest.raises(ValueError, match="unknown config name"):
        get_config("huge")


def test_unparsable_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("renderer: [unclosed\n")
    with pytest.raises(ValueError, match="does not parse"):
        load_config(str(path))


def test_the_recipe_holds_every_knob_outside_the_paper():
    """The shipped configs follow the paper (recipe ``paper``: every knob off); the paper's
    sections hold none of the recipe's knobs."""
    for name in ("tiny", "base", "gesture", "gesture-tiny"):
        config = get_config(name)
        assert config.recipe == RecipeConfig() and config.recipe.name == "paper"
        data = config_to_dict(config)
        for section in ("renderer", "loss", "train", "motion", "stage2"):
            assert not set(data[section]) & {f.name for f in dataclasses.fields(RecipeConfig)}, section


def _flat(config_dict, film=True, alpha_mouth=3.0, freeze=("lmdd",)):
    """The dict of a config written before the recipe section existed (format 1)."""
    data = copy.deepcopy(config_dict)
    recipe = data.pop("recipe")
    data["renderer"]["decoder_motion_film"] = film
    data["renderer"]["decoder_motion"] = False
    data["loss"].update(alpha_mouth=alpha_mouth, mouth_crop=recipe["mouth_crop"],
                        mouth_margin=recipe["mouth_margin"], alpha_mouth_open=0.0)
    data["train"]["freeze"] = list(freeze)
    return data


def test_flat_recipe_knobs_migrate_into_the_recipe():
    current = config_to_dict(get_config("tiny"))
    old = _flat(current)
    frozen = copy.deepcopy(old)
    config = config_from_dict(old)
    assert old == frozen                                  # the input is left as it was
    assert config.recipe == RecipeConfig(name="custom", decoder_motion_film=True, alpha_mouth=3.0,
                                         freeze=("lmdd",))
    assert config_to_dict(config)["renderer"] == current["renderer"]
    # knobs all at their defaults: the paper
    assert config_from_dict(_flat(current, film=False, alpha_mouth=0.0, freeze=())).recipe == RecipeConfig()
    # a current mapping comes back equal
    assert migrate_config(current) == current
    both = _flat(current)
    both["recipe"] = {"alpha_mouth": 1.0}
    with pytest.raises(ValueError, match="both loss.alpha_mouth .* and recipe.alpha_mouth"):
        config_from_dict(both)


def test_a_removed_experiment_is_dropped_when_off_and_refused_when_on():
    old = _flat(config_to_dict(get_config("tiny")))
    assert "decoder_motion" not in config_to_dict(config_from_dict(old))["renderer"]
    old["renderer"]["decoder_motion"] = True
    with pytest.raises(ValueError, match="renderer.decoder_motion: an experiment removed .*experiments.md"):
        config_from_dict(old)
    # in a partial (hand-written) section an unknown key stays an error
    with pytest.raises(ValueError, match="unknown config key.*renderer.decoder_motion"):
        config_from_dict({"name": "tiny", "renderer": {"decoder_motion": False}})


def test_the_demo_config_names_its_recipe():
    config = load_config(str(Path(__file__).resolve().parents[2] / "examples" / "demo" / "config.yaml"))
    assert config.recipe.name == "mouth" and config.recipe.decoder_motion_film
    assert config.motion.prediction == "v"
