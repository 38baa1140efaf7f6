"""mamba_ssm parity beyond Mamba-1's own calls: every call its ``selective_scan_fn`` accepts
(constant B/C, mixed groups, B/C in another dtype than u) on every backend against the float64
reference, and the attributes of ``mamba_ssm.Mamba`` that code reaches for (``act``)."""
import pytest
import torch
import torch.nn.functional as F

from kernels import Mamba

EXPECTED_KEYS = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                 "dt_proj.weight", "dt_proj.bias", "out_proj.weight"}


def test_mamba_exposes_act_as_a_silu_module():
    module = Mamba(12, d_state=4, backend="torch")
    assert isinstance(module.act, torch.nn.SiLU)
    x = torch.randn(3, 7)
    torch.testing.assert_close(module.act(x), F.silu(x), rtol=0, atol=0)
    # a module without parameters or buffers: the state_dict stays mamba_ssm's
    assert set(module.state_dict()) == EXPECTED_KEYS
