"""Image-quality metrics: PSNR against known MSEs, SSIM against a direct windowed computation,
LPIPS-VGG layout, behaviour and missing-weights errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mim.metrics import LPIPS, psnr, ssim

# torchvision's vgg16().features: 13 convs, (index, in, out); LPIPS taps relu1_2 ... relu5_3.
VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]
LPIPS_TAPS = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}


def _random_lpips_tensors():
    tensors = {}
    for index, c_in, c_out in VGG16_CONVS:
        std = math.sqrt(2 / (9 * c_in))
        tensors[f"features.{index}.weight"] = std * torch.randn(c_out, c_in, 3, 3)
        tensors[f"features.{index}.bias"] = 0.01 * torch.randn(c_out)
    for k, channels in enumerate((64, 128, 256, 512, 512)):
        tensors[f"lin{k}.weight"] = torch.rand(1, channels, 1, 1)  # LPIPS heads are non-negative
    return tensors


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
    tensors = _random_lpips_tensors()
    save_file(tensors, str(path))
    return path, tensors


def test_psnr_known_mse():
    target = 0.8 * torch.rand(3, 3, 17, 19)
    offsets = torch.tensor([0.1, 0.01, 0.2]).view(3, 1, 1, 1)
    values = psnr(target + offsets, target)
    assert values.shape == (3,)
    expected = torch.tensor([20.0, 40.0, 20 - 20 * math.log10(2)])
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(psnr(255 * (target + offsets), 255 * target, data_range=255.0),
                               expected, rtol=1e-4, atol=1e-4)
    assert torch.isinf(psnr(target, target)).all()


def _ssim_direct(x, y, data_range=1.0):
    """SSIM of two (C, H, W) float64 images by explicit loops over valid window positions."""
    g = [math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)]
    total = sum(g)
    w = [[g[a] * g[b] / total ** 2 for b in range(11)] for a in range(11)]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels, height, width = x.shape
    values = []
    for c in range(channels):
        for i in range(height - 10):
            for j in range(width - 10):
                px = [[x[c, i + a, j + b].item() for b in range(11)] for a in range(11)]
                py = [[y[c, i + a, j + b].item() for b in range(11)] for a in range(11)]
                mx = sum(w[a][b] * px[a][b] for a in range(11) for b in range(11))
                my = sum(w[a][b] * py[a][b] for a in range(11) for b in range(11))
                vx = sum(w[a][b] * (px[a][b] - mx) ** 2 for a in range(11) for b in range(11))
                vy = sum(w[a][b] * (py[a][b] - my) ** 2 for a in range(11) for b in range(11))
                cxy = sum(w[a][b] * (px[a][b] - mx) * (py[a][b] - my)
                          for a in range(11) for b in range(11))
                values.append((2 * mx * my + c1) * (2 * cxy + c2)
                              / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def test_ssim_matches_direct_computation():
    x = torch.rand(2, 2, 13, 14, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    values = ssim(x, y)
    assert values.shape == (2,) and values.dtype == torch.float64
    expected = torch.tensor([_ssim_direct(x[b], y[b]) for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=1e-12)
    # float32 inputs agree with the float64 direct computation
    torch.testing.assert_close(ssim(x.float(), y.float()), expected.float(), rtol=1e-5, atol=1e-5)


def test_ssim_properties():
    x = torch.rand(2, 3, 24, 20)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noisy = [ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)) for s in (0.02, 0.1, 0.3)]
    assert (noisy[0] < 1).all() and (noisy[1] < noisy[0]).all() and (noisy[2] < noisy[1]).all()
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(ssim(255 * x, 255 * y, data_range=255.0), ssim(x, y))
    # each image of the batch is scored on its own
    torch.testing.assert_close(ssim(torch.stack([x[0], y[1]]), torch.stack([x[0], x[1]]))[0],
                               torch.tensor(1.0))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_metric_bad_inputs(metric):
    with pytest.raises(ValueError, match="same shape"):
        metric(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match=r"pred must be a floating-point \(B, C, H, W\)"):
        metric(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="target must be a floating-point"):
        metric(torch.rand(1, 3, 16, 16), torch.ones(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="data_range"):
        metric(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), data_range=0.0)


def test_ssim_too_small():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


def _lpips_direct(tensors, pred, target):
    """LPIPS from the raw tensors: scaling layer, VGG-16 convs, unit-normalized taps, heads."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = []
    for images in (pred, target):
        x = (2 * images - 1 - shift) / scale
        found = {}
        for index in range(30):
            weight = tensors.get(f"features.{index}.weight")
            if weight is not None:
                x = F.conv2d(x, weight, tensors[f"features.{index}.bias"], padding=1)
            elif index in (4, 9, 16, 23):
                x = F.max_pool2d(x, 2)
            else:
                x = F.relu(x)
                if index in LPIPS_TAPS:
                    found[LPIPS_TAPS[index]] = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        taps.append(found)
    return sum((tensors[f"lin{k}.weight"] * (taps[0][k] - taps[1][k]) ** 2).sum(1).mean((1, 2))
               for k in range(5))


def test_lpips_with_weights(lpips_file):
    path, tensors = lpips_file
    lpips = LPIPS(path)
    assert sorted(lpips.state_dict()) == sorted(tensors)
    a, b = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 32, 40)
    same = lpips(a, a)
    assert same.shape == (2,)
    assert (same == 0).all()
    distance = lpips(a, b)
    assert (distance > 0).all()
    torch.testing.assert_close(distance, lpips(b, a))
    torch.testing.assert_close(distance, _lpips_direct(tensors, a, b), rtol=1e-5, atol=1e-7)
    closer = lpips(a, (a + 0.02 * torch.randn_like(a)).clamp(0, 1))
    assert (closer < distance).all()


def test_lpips_needs_weights(lpips_file, monkeypatch, tmp_path):
    monkeypatch.delenv("MIM_LPIPS_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="LPIPS needs pretrained weights.*MIM_LPIPS_WEIGHTS"):
        LPIPS()
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        LPIPS(tmp_path / "absent.safetensors")
    path, tensors = lpips_file
    monkeypatch.setenv("MIM_LPIPS_WEIGHTS", str(path))
    assert torch.equal(LPIPS().lin4.weight, tensors["lin4.weight"])
    incomplete = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "lin4.weight"}, str(incomplete))
    with pytest.raises(ValueError, match=r"missing keys \['lin4\.weight'\]"):
        LPIPS(incomplete)
