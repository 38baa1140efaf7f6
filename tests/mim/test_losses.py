"""Stage-1 losses: VGG-19 trunk layout and weight loading, perceptual loss (VGG and fallback),
multi-scale patch discriminator and GAN losses, threshold mask loss L_pg, eq. 3."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from mim.losses import (
    MultiScalePatchDiscriminator,
    PerceptualLoss,
    VGG19Features,
    crop_boxes,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    load_vgg19_weights,
    threshold_mask_loss,
    total_generator_loss,
)

# torchvision's vgg19().features: 16 convs, (index, in, out).
VGG19_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
]
EXPECTED_VGG19_PARAMETERS = [
    item
    for index, c_in, c_out in VGG19_CONVS
    for item in ((f"features.{index}.weight", (c_out, c_in, 3, 3)),
                 (f"features.{index}.bias", (c_out,)))
]


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """A safetensors file of a randomly initialized VGG-19 trunk (torchvision key layout)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vgg19") / "vgg19.safetensors"
    save_file(VGG19Features().state_dict(), str(path))
    return path


@pytest.fixture
def no_vgg_env(monkeypatch):
    monkeypatch.delenv("MIM_VGG19_WEIGHTS", raising=False)


def test_vgg19_features_layout_matches_torchvision():
    vgg = VGG19Features()
    layout = [(name, tuple(p.shape)) for name, p in vgg.named_parameters()]
    assert layout == EXPECTED_VGG19_PARAMETERS
    assert list(vgg.state_dict()) == [name for name, _ in EXPECTED_VGG19_PARAMETERS]
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not vgg.training
    vgg.train()
    assert not vgg.training


def test_vgg19_features_taps_and_normalization():
    vgg = VGG19Features()
    images = torch.rand(2, 3, 48, 32)
    activations = vgg(images)
    assert [a.shape[1:] for a in activations] == [
        (64, 48, 32), (128, 24, 16), (256, 12, 8), (512, 6, 4), (512, 3, 2)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    conv0 = vgg.features[0]
    relu1_1 = F.relu(F.conv2d((images - mean) / std, conv0.weight, conv0.bias, padding=1))
    torch.testing.assert_close(activations[0], relu1_1)
    # the last tap is the output of layer 29 (relu5_1) of the whole trunk run in order
    x = (images - mean) / std
    for layer in vgg.features[:30]:
        x = layer(x)
    torch.testing.assert_close(activations[4], x)
    with pytest.raises(ValueError, match="at least 16"):
        vgg(torch.rand(1, 3, 8, 32))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\)"):
        vgg(torch.rand(1, 1, 32, 32))


def test_load_vgg19_weights_round_trip(vgg19_file, tmp_path):
    saved = load_file(str(vgg19_file))
    loaded = load_vgg19_weights(vgg19_file)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[name])
    # torchvision's vgg19().features.state_dict() has no "features." prefix.
    bare = tmp_path / "bare.safetensors"
    save_file({name[len("features."):]: t for name, t in saved.items()}, str(bare))
    assert torch.equal(load_vgg19_weights(bare).features[34].bias, saved["features.34.bias"])
    # the full vgg19().state_dict() also holds the classifier, which is ignored.
    full = tmp_path / "full.safetensors"
    save_file({**saved, "classifier.0.weight": torch.zeros(4, 8)}, str(full))
    assert torch.equal(load_vgg19_weights(full).features[0].weight, saved["features.0.weight"])


def test_load_vgg19_weights_strict(vgg19_file, tmp_path):
    saved = load_file(str(vgg19_file))
    wrong = dict(saved, **{"features.5.weight": torch.zeros(128, 64, 5, 5)})
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, str(path))
    with pytest.raises(ValueError, match=r"features\.5\.weight: file \(128, 64, 5, 5\)"):
        load_vgg19_weights(path)
    partial = {k: v for k, v in saved.items() if k != "features.34.bias"}
    partial["features.40.weight"] = torch.zeros(1)
    save_file(partial, str(path))
    with pytest.raises(ValueError, match=r"missing keys \['features\.34\.bias'\], "
                                         r"unexpected keys \['features\.40\.weight'\]"):
        load_vgg19_weights(path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_vgg19_weights(corrupt)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_vgg19_weights(tmp_path / "nowhere.safetensors")


def test_perceptual_loss_vgg19(vgg19_file):
    loss_fn = PerceptualLoss(vgg19_file, scales=(1, 0.5))
    assert loss_fn.mode == "vgg19"
    target = torch.rand(2, 3, 40, 36, requires_grad=True)
    assert loss_fn(target.detach().clone(), target.detach()).item() == 0.0
    pred = torch.rand(2, 3, 40, 36, requires_grad=True)
    loss = loss_fn(pred, target)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert torch.isfinite(pred.grad).all()
    assert target.grad is None
    assert all(p.grad is None for p in loss_fn.parameters())


def test_perceptual_loss_vgg19_definition(vgg19_file):
    loss_fn = PerceptualLoss(vgg19_file, scales=(1, 0.5), layer_weight=3.0)
    vgg = load_vgg19_weights(vgg19_file)
    pred, target = torch.rand(1, 3, 36, 34), torch.rand(1, 3, 36, 34)
    expected = 0.0
    half = [F.interpolate(x, size=(18, 17), mode="bilinear", antialias=True)
            for x in (pred, target)]
    for p, t in ((pred, target), half):
        expected += sum(3.0 * (a - b).abs().mean() for a, b in zip(vgg(p), vgg(t)))
    torch.testing.assert_close(loss_fn(pred, target), expected)


def test_perceptual_loss_reads_environment(vgg19_file, monkeypatch, caplog):
    monkeypatch.setenv("MIM_VGG19_WEIGHTS", str(vgg19_file))
    with caplog.at_level(logging.WARNING, logger="mim.losses"):
        assert PerceptualLoss().mode == "vgg19"
    assert not caplog.records
    monkeypatch.setenv("MIM_VGG19_WEIGHTS", str(vgg19_file.parent / "gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        PerceptualLoss()


def test_perceptual_loss_explicit_missing_path_raises(tmp_path, no_vgg_env):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        PerceptualLoss(tmp_path / "missing.safetensors")


def test_perceptual_loss_fallback(no_vgg_env, caplog):
    with caplog.at_level(logging.WARNING, logger="mim.losses"):
        loss_fn = PerceptualLoss(scales=(1, 0.5, 0.25))
        target = torch.rand(2, 3, 32, 32)
        noise = torch.randn(2, 3, 32, 32)
        values = [loss_fn(target + t * noise, target).item() for t in (1.0, 0.5, 0.25, 0.0)]
    warnings = [r for r in caplog.records
                if r.name == "mim.losses" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "MIM_VGG19_WEIGHTS" in warnings[0].getMessage()
    assert "pixel-pyramid" in warnings[0].getMessage()
    assert loss_fn.mode == "pixel-pyramid"
    assert values[0] > values[1] > values[2] > values[3] == 0.0
    # the fallback is linear in t for this family (L1 terms scale with t): a closed-form check.
    assert values[1] == pytest.approx(values[0] / 2, rel=1e-5)
    # one gradient step lowers it
    pred = (target + noise).requires_grad_(True)
    loss = loss_fn(pred, target)
    loss.backward()
    assert loss_fn(pred.detach() - 1e-3 * pred.grad, target).item() < loss.item()


def test_perceptual_loss_fallback_definition(no_vgg_env):
    loss_fn = PerceptualLoss(scales=(1,), layer_weight=2.0)
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[..., 1, 2] = 0.5  # one pixel per channel
    # pixel L1: 3 entries of 0.5 among 48; forward differences along x (3 x 4 x 3 = 36 entries)
    # and along y (36 entries): 2 entries of magnitude 0.5 per channel each.
    pixel = 0.5 * 3 / 48
    grad_x = 0.5 * 2 * 3 / 36
    grad_y = 0.5 * 2 * 3 / 36
    assert loss_fn(pred, target).item() == pytest.approx(2.0 * (pixel + grad_x + grad_y))


def test_perceptual_loss_bad_arguments(vgg19_file, no_vgg_env):
    with pytest.raises(ValueError, match="scales"):
        PerceptualLoss(scales=(1, 0))
    with pytest.raises(ValueError, match="scales"):
        PerceptualLoss(scales=())
    loss_fn = PerceptualLoss(vgg19_file)
    with pytest.raises(ValueError, match="needs at least 16"):
        loss_fn(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 120))


@pytest.mark.parametrize("size, logit_sizes", [(64, (3, 1)), (256, (15, 7))])
def test_discriminator_shapes(size, logit_sizes):
    disc = MultiScalePatchDiscriminator(scales=(1, 0.5))
    images = torch.rand(2, 3, size, size, requires_grad=True)
    outputs = disc(images)
    assert len(outputs) == 2
    for (features, logits), logit_size, scale in zip(outputs, logit_sizes, (1, 0.5)):
        assert logits.shape == (2, 1, logit_size, logit_size)
        assert [f.shape[1] for f in features] == [64, 128, 256, 512]
        side = int(size * scale)
        assert [f.shape[-1] for f in features] == [side // 2, side // 4, side // 8, side // 16]
    sum(logits.sum() for _, logits in outputs).backward()
    assert images.grad.abs().sum() > 0


def test_discriminator_spectral_norm():
    with_norm = MultiScalePatchDiscriminator(base_channels=8)
    convs = [m for m in with_norm.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 5
    assert all(parametrize.is_parametrized(c, "weight") for c in convs)
    # spectral norm bounds each conv's reshaped weight to largest singular value about 1
    with_norm.train()
    for _ in range(20):
        with_norm(torch.rand(1, 3, 64, 64))
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, rel=0.05)
    plain = MultiScalePatchDiscriminator(base_channels=8, spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules()
                   if isinstance(m, torch.nn.Conv2d))


def test_discriminator_bad_inputs():
    disc = MultiScalePatchDiscriminator(base_channels=8)
    with pytest.raises(ValueError, match="too small"):
        disc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        disc(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="num_layers"):
        MultiScalePatchDiscriminator(num_layers=0)


def _outputs(*logit_lists):
    return [([torch.tensor(values)], torch.tensor(values)) for values in logit_lists]


def test_gan_losses_hand_computed():
    real = _outputs([0.5, 2.0], [1.0])
    fake = _outputs([-0.5, 0.25], [3.0])
    # lsgan: scale 0: ((0.25 + 1) / 2) + ((0.25 + 0.0625) / 2); scale 1: 0 + 9
    assert discriminator_loss(real, fake).item() == pytest.approx(0.625 + 0.15625 + 9.0)
    # hinge: scale 0: (0.5 + 0) / 2 + (0.5 + 1.25) / 2; scale 1: 0 + 4
    assert discriminator_loss(real, fake, kind="hinge").item() == pytest.approx(0.25 + 0.875 + 4.0)
    # generator lsgan: (2.25 + 0.5625) / 2 + 4; hinge: -(-0.125) - 3
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.40625 + 4.0)
    assert generator_adversarial_loss(fake, kind="hinge").item() == pytest.approx(0.125 - 3.0)


def test_gan_losses_bad_kind():
    outputs = _outputs([0.0])
    with pytest.raises(ValueError, match="kind"):
        discriminator_loss(outputs, outputs, kind="wgan")
    with pytest.raises(ValueError, match="kind"):
        generator_adversarial_loss(outputs, kind="vanilla")
    with pytest.raises(ValueError, match="one entry per scale"):
        discriminator_loss(outputs, outputs + outputs)


def test_feature_matching():
    # eval: spectral norm's power iteration does not step between the two calls
    disc = MultiScalePatchDiscriminator(base_channels=8).eval()
    images = torch.rand(2, 3, 64, 64)
    real = disc(images)
    assert feature_matching_loss(real, disc(images)).item() == 0.0
    real = [([torch.tensor([1.0, 2.0]), torch.tensor([0.0])], None)]
    fake_features = [torch.tensor([1.5, 1.0], requires_grad=True),
                     torch.tensor([2.0], requires_grad=True)]
    real[0][0][0].requires_grad_(True)
    fake = [(fake_features, None)]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((0.75 + 2.0) / 2)
    loss.backward()
    assert real[0][0][0].grad is None
    torch.testing.assert_close(fake_features[0].grad, torch.tensor([0.25, -0.25]))


def test_threshold_mask_loss_hand_computed():
    # B=1, C=2, spatial 3: |diff| channel means per location are 0.5, 0.15, 2.0
    v_dev = torch.zeros(1, 2, 3)
    v_gt = torch.tensor([[[0.5, 0.1, 1.0], [-0.5, 0.2, 3.0]]], requires_grad=True)
    loss = threshold_mask_loss(v_gt, v_dev, tau=0.3)
    # locations 0 and 2 pass: sqrt((0.25 + 0.25 + 1 + 9) / (2 * 2))
    expected = math.sqrt(10.5 / 4)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d/d v = v / (N * L) on masked entries, 0 elsewhere (N = 4)
    grad = torch.tensor([[[0.5, 0.0, 1.0], [-0.5, 0.0, 3.0]]]) / (4 * expected)
    torch.testing.assert_close(v_gt.grad, grad)


def test_threshold_mask_loss_batch_and_empty_mask():
    v_dev = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    v_gt = torch.tensor([[[[0.1, 0.2], [0.0, 0.05]]], [[[1.0, 0.0], [0.0, 0.0]]]],
                        dtype=torch.float64, requires_grad=True)
    loss = threshold_mask_loss(v_gt, v_dev, tau=0.5)
    # sample 0 has no masked location (0); sample 1 has one: sqrt(1 / 1)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(v_gt.grad).all()
    assert v_gt.grad[0].abs().sum() == 0

    nothing = torch.zeros(1, 3, 4, requires_grad=True)
    empty = threshold_mask_loss(nothing, torch.zeros(1, 3, 4), tau=0.0)
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(nothing.grad).all() and nothing.grad.abs().sum() == 0


def test_threshold_mask_loss_gradcheck_and_detach_contract():
    v_gt = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    v_dev = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: threshold_mask_loss(a, b, 0.9), (v_gt, v_dev))
    threshold_mask_loss(v_gt, v_dev, 0.9).backward()
    # v_gt is not detached by the function: both sides receive (opposite) gradients
    torch.testing.assert_close(v_gt.grad, -v_dev.grad)
    assert v_gt.grad.abs().sum() > 0


def test_threshold_mask_loss_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        threshold_mask_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), 0.1)
    with pytest.raises(ValueError, match="tau"):
        threshold_mask_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), -0.1)
    with pytest.raises(ValueError, match="tau"):
        threshold_mask_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), float("nan"))


def test_total_generator_loss():
    per, adv, pg = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert total_generator_loss(per, adv, pg, alpha=(1.0, 0.1, 10.0)).item() == pytest.approx(52.3)
    with pytest.raises(ValueError, match="alpha"):
        total_generator_loss(per, adv, pg, alpha=(1.0, 0.1))


# ------------------------------------------------------------------------------- crop_boxes


def test_crop_boxes_samples_the_box_pixels_exactly():
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    # pixels x 2..5, y 1..4 (edges at -1 + 2k/8) and the whole image
    boxes = torch.tensor([[-0.5, -0.75, 0.5, 0.25], [-1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    crops = crop_boxes(images, boxes, 4)
    torch.testing.assert_close(crops[0], images[0, :, 1:5, 2:6], rtol=0, atol=1e-12)
    torch.testing.assert_close(crop_boxes(images[1:], boxes[1:], 8), images[1:], rtol=0, atol=1e-12)
    # margin 0.5 doubles the first box: x spans the image, y runs from one pixel above it
    grown = crop_boxes(images[:1], boxes[:1], 8, margin=0.5)[0]
    assert torch.equal(grown[:, 0], torch.zeros(3, 8, dtype=torch.float64))
    torch.testing.assert_close(grown[:, 1:], images[0, :, 0:7], rtol=0, atol=1e-12)


def test_crop_boxes_is_differentiable_and_checks_its_input():
    images = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[-0.3, -0.2, 0.4, 0.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: crop_boxes(x, boxes, 5, 0.1), (images,))
    with pytest.raises(ValueError, match="boxes must have shape"):
        crop_boxes(images, boxes[0], 4)
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_boxes(images, boxes[:, [2, 1, 0, 3]], 4)
    with pytest.raises(ValueError, match="size"):
        crop_boxes(images, boxes, 0)
    with pytest.raises(ValueError, match="images must have shape"):
        crop_boxes(images[0], boxes, 4)
