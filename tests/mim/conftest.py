"""Fixtures shared by the tests of the product modules."""

import pytest
import torch
from torch import nn

from mim.config import config_to_dict, get_config
from mim.models import Renderer
from mim.models.motion import MotionGenerator
from mim.checkpoint import save_checkpoint


def _tiny_stage2(path, *, wake_zero_heads=False):
    """A random tiny stage-2 checkpoint (seed 0, 2 DDIM steps) written to ``path``.

    ``wake_zero_heads`` fills the zero-initialized parameters with small noise: untouched, they
    make the frames ignore the motion and the motion ignore the audio. Returns
    (config, renderer, motion)."""
    config = get_config("tiny")
    config.motion.sample_steps = 2
    torch.manual_seed(0)
    renderer = Renderer(config.renderer)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    if wake_zero_heads:
        with torch.no_grad():
            for parameter in [*renderer.parameters(), *motion.parameters()]:
                if not parameter.any():
                    parameter.normal_(0, 0.05)
    save_checkpoint(str(path), kind="stage2", step=0, config=config_to_dict(config),
                    modules={"renderer": renderer, "motion": motion})
    return config, renderer, motion


@pytest.fixture(scope="session")
def tiny_stage2():
    """The factory ``tiny_stage2(path, wake_zero_heads=False) -> (config, renderer, motion)``."""
    return _tiny_stage2


def randomise_metric_net(net, seed):
    """Weights that keep activations at a useful scale through the whole depth (PyTorch's default
    init shrinks them to ~1e-8 by the Inception's pool), and batch-norm statistics that matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
    return net


@pytest.fixture(scope="session")
def randomised_metric_net():
    """``randomised_metric_net(net, seed) -> net`` with weights at a useful scale (below)."""
    return randomise_metric_net
