import json

import pytest

from mim.config import config_from_dict, config_to_dict, get_config, load_config, save_config


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
