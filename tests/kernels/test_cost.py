"""kernels.cost and each op's cost model: the counter's figures on hand-checkable ops, the fused
deviation_adanorm and fast-path selective-scan models against formulas worked by hand, every op's
traffic cases, and ``python -m bench.traffic`` run as a script (tests never import bench)."""
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from kernels import OPS, deviation_adanorm
from kernels.cost import Traffic, TrafficCase, TrafficCounter, count_forward_backward, tensor_bytes
from kernels.deviation_adanorm.cost import fused_traffic as adanorm_fused_traffic
from kernels.deviation_adanorm.cost import minimum_traffic as adanorm_minimum_traffic
from kernels.deviation_adanorm.cost import traffic_cases as adanorm_traffic_cases
from kernels.selective_scan.cost import fast_path_traffic

TENSORS_ON_CPU = True  # counts the aten ops of CPU tensors; no Triton kernel runs here
FP32 = 4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _count(fn) -> TrafficCounter:
    with TrafficCounter() as counter:
        fn()
    return counter


def test_add_of_two_vectors_is_one_launch_reading_both_writing_one():
    x, y = torch.randn(1000), torch.randn(1000)
    counter = _count(lambda: torch.add(x, y))
    assert counter.summary() == Traffic(launches=1, bytes_read=2 * 1000 * FP32,
                                        bytes_written=1000 * FP32)
    assert [r.name for r in counter.records] == ["aten.add.Tensor"]


def test_views_cost_nothing():
    x = torch.randn(1000)
    counter = _count(lambda: (x.view(10, 100).t().unsqueeze(0).expand(3, 100, 10), x[::2],
                              x.detach(), x.reshape(8, 125).permute(1, 0), x.split(300), x.unbind()))
    assert counter.summary() == Traffic(0, 0, 0)
    assert counter.records == []


def test_expanded_operand_counts_its_memory_once():
    row, matrix = torch.randn(1000), torch.randn(8, 1000)
    expanded = row.expand(8, 1000)
    assert tensor_bytes(expanded) == 1000 * FP32
    counter = _count(lambda: row.expand(8, 1000) + matrix)
    assert counter.summary() == Traffic(launches=1, bytes_read=(1000 + 8 * 1000) * FP32,
                                        bytes_written=8 * 1000 * FP32)


def test_sliced_and_overlapping_views_count_the_elements_they_touch():
    frames = torch.randn(4, 25, 768)
    assert tensor_bytes(frames[:, 1:, :]) == 4 * 24 * 768 * FP32
    assert tensor_bytes(torch.randn(10).unfold(0, 5, 1)) == 10 * FP32
    assert tensor_bytes(torch.randn(0, 3)) == 0


def test_in_place_out_and_allocating_ops():
    x, y, out = torch.randn(1000), torch.randn(1000), torch.empty(1000)
    assert _count(lambda: x.add_(y)).summary() == Traffic(1, 2 * 4000, 4000)
    assert _count(lambda: torch.add(x, y, out=out)).summary() == Traffic(1, 2 * 4000, 4000)
    assert _count(lambda: x.zero_()).summary() == Traffic(1, 0, 4000)
    assert _count(lambda: torch.zeros(1000)).summary() == Traffic(1, 0, 4000)
    assert _count(lambda: torch.zeros_like(y)).summary() == Traffic(1, 0, 4000)
    assert _count(lambda: (torch.empty(1000), torch.empty_like(y))).summary() == Traffic(0, 0, 0)


def test_list_operands_are_read():
    parts = [torch.randn(100), torch.randn(300)]
    assert _count(lambda: torch.cat(parts)).summary() == Traffic(1, 400 * FP32, 400 * FP32)


def test_operand_passed_twice_is_read_once():
    x = torch.randn(1000)
    assert _count(lambda: x * x).summary() == Traffic(1, 4000, 4000)


def test_backward_of_a_product_is_captured():
    x = torch.randn(1000, requires_grad=True)
    y = torch.randn(1000, requires_grad=True)
    out = x * y
    grad = torch.randn(1000)
    counter = _count(lambda: torch.autograd.grad(out, (x, y), grad))
    # grad_x = grad * y and grad_y = grad * x: two multiplications, each reading two vectors.
    assert [r.name for r in counter.records] == ["aten.mul.Tensor", "aten.mul.Tensor"]
    assert counter.summary() == Traffic(launches=2, bytes_read=4 * 4000, bytes_written=2 * 4000)


def test_custom_op_is_counted_by_the_aten_ops_it_runs():
    v, scale, shift = torch.randn(2, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    names = {r.name for r in _count(lambda: deviation_adanorm(v, scale, shift,
                                                              backend="fast")).records}
    assert "aten.addcmul.default" in names and "aten.var_mean.correction" in names
    assert all(name.startswith("aten.") for name in names)


def test_adanorm_fused_traffic_matches_the_formula_by_hand():
    # B=2, N=3 (T=4), R=5, G=7, fp32: v is 2·4·7·4 = 224 bytes, each (B, N, R, G) tensor
    # 2·3·5·7·4 = 840 bytes, the rows' mean and 1/std 8·2·3 = 48 bytes, the N frame-gradient rows
    # re-read for grad_v_0 2·3·7·4 = 168 bytes, the arrival counters 4·2 = 8 bytes.
    fused = adanorm_fused_traffic(B=2, N=3, R=5, G=7, itemsize=4)
    assert fused["fwd"] == Traffic(launches=1, bytes_read=224 + 2 * 840, bytes_written=840 + 48)
    assert fused["bwd"] == Traffic(launches=2, bytes_read=2 * 840 + 224 + 48 + 168,
                                   bytes_written=840 + 224 + 8)
    minimum = adanorm_minimum_traffic(B=2, N=3, R=5, G=7, itemsize=4)
    assert minimum["fwd"].bytes == 224 + 3 * 840
    assert minimum["bwd"].bytes == 3 * 840 + 2 * 224
    bf16 = adanorm_fused_traffic(B=2, N=3, R=5, G=7, itemsize=2)
    assert bf16["fwd"].bytes == (224 + 3 * 840) // 2 + 48


def test_scan_fast_path_traffic_matches_the_formula_by_hand():
    # batch=2, dim=3, L=130 (three 64-step checkpoints), N=4, fp32: u, dt, z 2·3·130·4 = 3120
    # bytes each, B and C 2·4·130·4 = 4160 each, A 3·4·4 = 48, D 12, the initial state 2·3·4·4 = 96.
    traffic = fast_path_traffic(batch=2, dim=3, length=130, nstate=4, compute_itemsize=4)
    assert traffic == Traffic(launches=1, bytes_read=3 * 3120 + 2 * 4160 + 48 + 12 + 96,
                              bytes_written=3120 + 96 + 2 * 3 * math.ceil(130 / 64) * 4 * 4)
    float64 = fast_path_traffic(batch=2, dim=3, length=130, nstate=4, compute_itemsize=8)
    assert float64.bytes == 2 * traffic.bytes


def test_eager_reference_moves_more_than_the_fused_kernels():
    case = next(c for c in adanorm_traffic_cases() if c.dtype == torch.float32)
    counters = count_forward_backward(case.eager_paths["reference"], case.make_inputs(),
                                      case.directions)
    assert set(counters) == {"fwd", "bwd"}
    for direction, counter in counters.items():
        eager = counter.summary()
        assert eager.bytes > case.fused[direction].bytes >= case.minimum[direction].bytes
        assert eager.launches > case.fused[direction].launches


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_traffic_cases_the_table_can_count(op):
    """Each case names its op, builds inputs its eager paths take, and its fused kernels move no
    fewer bytes than the minimum (counted here forward only: the table counts the rest)."""
    cases = importlib.import_module(f"kernels.{op}.cost").traffic_cases()
    assert cases and all(isinstance(case, TrafficCase) and case.op == op for case in cases)
    for case in cases:
        assert set(case.directions) <= {"fwd", "bwd"} and case.eager_paths
        for direction in case.directions:
            assert case.fused[direction].bytes >= case.minimum[direction].bytes > 0


def test_driver_writes_results_and_prints_the_table_last(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "bench.traffic", "--op", "deviation_adanorm",
                             "--out-dir", str(tmp_path)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert any("modeled, not measured" in line for line in printed)
    header = next(i for i, line in enumerate(printed) if "modeled H100 µs eager" in line)
    table_rows = printed[header + 2:]  # the header, a rule, then every row to the end
    report = json.loads((tmp_path / "traffic.json").read_text())
    assert {"machine", "versions", "date", "rows"} <= report.keys()
    assert len(report["rows"]) == len(table_rows) == 8  # 2 dtypes x 2 eager paths x fwd, bwd
    assert "| deviation_adanorm |" in (tmp_path / "traffic.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic.json", "traffic.md"]
