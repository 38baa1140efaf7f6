"""bench.traffic: the counter's figures on hand-checkable ops, the fused deviation_adanorm model
against the formula worked by hand, and the eager reference against the fused kernels."""
import json

import torch

from bench.traffic import CASES, main, measure
from kernels.cost import Traffic, TrafficCounter, tensor_bytes
from kernels.deviation_adanorm.cost import fused_traffic as adanorm_fused_traffic
from kernels.deviation_adanorm.cost import minimum_traffic as adanorm_minimum_traffic
from kernels import deviation_adanorm

FP32 = 4


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
                                                              backend="torch")).records}
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


def test_eager_reference_moves_more_than_the_fused_kernels():
    case = next(c for c in CASES if c.op == "deviation_adanorm" and c.dtype == torch.float32)
    rows = [row for row in measure(case) if row.path == "reference"]
    assert {row.direction for row in rows} == {"fwd", "bwd"}
    for row in rows:
        assert row.eager.bytes > row.fused.bytes >= row.minimum.bytes
        assert row.eager.launches > row.fused.launches


def test_main_writes_results_and_prints_the_table_last(tmp_path, capsys):
    assert main(["--op", "deviation_adanorm", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert any("modeled, not measured" in line for line in printed)
    header = next(i for i, line in enumerate(printed) if "modeled H100 µs eager" in line)
    table_rows = printed[header + 2:]  # the header, a rule, then every row to the end
    report = json.loads((tmp_path / "traffic.json").read_text())
    assert {"machine", "versions", "date", "rows"} <= report.keys()
    assert len(report["rows"]) == len(table_rows) == 8  # 2 dtypes x 2 eager paths x fwd, bwd
    assert "| deviation_adanorm |" in (tmp_path / "traffic.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic.json", "traffic.md"]
