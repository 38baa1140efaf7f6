"""ONNX export of the stage-1 renderer (mim.export), checked with onnxruntime on the CPU.

The renderer is the tiny config with random weights whose zero-initialized heads (DIT head,
region logits, displacement, FiLM) are drawn too, so the warp moves features and about a third
of the sampling grid lies outside [-1, 1] (asserted). Agreement criterion, for every output b
(PyTorch, the renderer's default torch backend) and a (onnxruntime):

    max|a − b| <= 1e-4 · max|b|   and, per element,   |a − b| <= 1e-4 · |b| + 1e-5 · max|b|.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from kernels.grid_sample_3d import grid_sample_3d_reference
from kernels.region_softmax_warp import region_softmax_warp_reference
from kernels.region_softmax_warp.reference import identity_grid
from mim.config import config_to_dict, get_config
from mim.export import (GRAPHS, ExportError, export_renderer_onnx, exporting, graph_paths, main,
                        renderer_graph_modules)
from mim.models import Renderer
from mim.checkpoint import save_checkpoint

RTOL = 1e-4


def assert_close(actual, expected, name):
    actual = np.asarray(actual)
    expected = expected.detach().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max())
    error = np.abs(actual - expected)
    assert error.max() <= RTOL * scale, f"{name}: max abs error {error.max():.3g} > {RTOL} x {scale:.3g}"
    bound = RTOL * np.abs(expected) + 1e-5 * scale
    assert (error <= bound).all(), f"{name}: {(error > bound).sum()} elements outside the bound"


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def node_counts(model):
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def tensor_shapes(model):
    """name → dims (int or symbolic name) of every typed value in the graph."""
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


@pytest.fixture(scope="module")
def config():
    return get_config("tiny")


@pytest.fixture(scope="module")
def renderer(config):
    torch.manual_seed(0)
    renderer = Renderer(config.renderer)
    with torch.no_grad():   # zero-initialized heads would give the identity warp
        for parameter in renderer.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return renderer.eval()


@pytest.fixture(scope="module")
def exported(renderer, tmp_path_factory):
    """All three graphs, GridSample on 5-D tensors (the default), opset 20."""
    root = tmp_path_factory.mktemp("onnx")
    written = export_renderer_onnx(renderer, root / "renderer.onnx")
    return {"root": root, "paths": written,
            "models": {graph: onnx.load(path) for graph, path in written.items()},
            "sessions": {graph: session(path) for graph, path in written.items()}}


def clip(b, n, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 64, 64, generator=generator), torch.rand(b, n, 3, 64, 64, generator=generator)


def render_inputs(state, motion):
    return {"feature": state.feature.numpy(), "appearance": state.appearance.numpy(),
            "source_motion": state.motion.numpy(), "motion": motion.numpy()}


def test_warp_is_nontrivial(renderer):
    """The precondition of the comparisons: the grid moves, partly outside [-1, 1], and an error
    in the sampling convention would show far above the tolerance."""
    source, driving = clip(2, 3, seed=1)
    seen = {}
    hook = renderer.lmdd.register_forward_hook(lambda module, args, out: seen.update(out=out))
    try:
        with torch.no_grad():
            state = renderer.encode_source(source)
            frames = renderer.render(state, renderer.encode_motion(driving))
    finally:
        hook.remove()
    logits, displacement = seen["out"][:2]
    flow = (logits.softmax(1).unsqueeze(2) * displacement).sum(1)
    grid = identity_grid(4, 32, 32, False, torch.float32, torch.device("cpu")) + flow.permute(0, 2, 3, 4, 1)
    outside = (grid.abs() > 1).any(-1).float().mean().item()
    assert 0.1 < outside < 0.9, outside
    renderer.warp.align_corners = True
    try:
        with torch.no_grad():
            shifted = renderer.render(state, renderer.encode_motion(driving))
    finally:
        renderer.warp.align_corners = False
    assert (shifted - frames).abs().max() > 100 * RTOL * frames.abs().max()


def test_files_opset_metadata_and_dynamic_axes(exported, config):
    assert sorted(exported["paths"]) == sorted(GRAPHS)
    for graph, path in exported["paths"].items():
        assert path == str(exported["root"] / f"renderer.{graph}.onnx")
        model = exported["models"][graph]
        assert {(o.domain, o.version) for o in model.opset_import} == {("", 20)}
        assert {node.domain for node in model.graph.node} == {""}   # standard ops only
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["mim.graph"] == graph and meta["mim.grid_sample"] == "onnx"
        assert meta["mim.render_window"] == str(config.renderer.render_window)
        assert json.loads(meta["mim.renderer_config"]) == config_to_dict(config)["renderer"]
    assert [p.name for p in (exported["root"]).iterdir() if p.name.startswith(".")] == []
    shapes = tensor_shapes(exported["models"]["render"])
    assert shapes["motion"] == ["batch", "frames", 192]
    assert shapes["feature"] == ["batch", 8, 4, 32, 32]
    assert shapes["frames"] == ["batch", "frames", 3, 64, 64]
    assert tensor_shapes(exported["models"]["encode_motion"])["frames"] == ["batch", "frames", 3, 64, 64]
    assert tensor_shapes(exported["models"]["encode_source"])["source"] == ["batch", 3, 64, 64]


def test_render_graph_samples_with_5d_gridsample(exported):
    model = exported["models"]["render"]
    samplers = [node for node in model.graph.node if node.op_type == "GridSample"]
    assert len(samplers) == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in samplers[0].attribute}
    assert attributes == {"mode": b"linear", "padding_mode": b"border", "align_corners": 0}
    shapes = tensor_shapes(model)
    volume, grid = (shapes[name] for name in samplers[0].input)
    assert volume[1:] == [8, 4, 32, 32] and len(volume) == 5
    assert grid[1:] == [4, 32, 32, 3] and len(grid) == 5
    for graph in ("encode_source", "encode_motion"):
        assert "GridSample" not in node_counts(exported["models"][graph])


@pytest.mark.parametrize("b, n", [(1, 1), (1, 5), (3, 2)])
def test_onnxruntime_matches_pytorch(exported, renderer, b, n):
    """Other batch and frame counts than the export's example (2, 3); the ONNX graphs chained
    as a deployment would, and the render graph on PyTorch's own features."""
    source, driving = clip(b, n, seed=10 * b + n)
    with torch.no_grad():
        state = renderer.encode_source(source)
        motion = renderer.encode_motion(driving)
        frames = renderer.render(state, motion)
    sessions = exported["sessions"]
    feature, appearance, source_motion = sessions["encode_source"].run(None, {"source": source.numpy()})
    assert_close(feature, state.feature, "feature")
    assert_close(appearance, state.appearance, "appearance")
    assert_close(source_motion, state.motion, "source_motion")
    (onnx_motion,) = sessions["encode_motion"].run(None, {"frames": driving.numpy()})
    assert_close(onnx_motion, motion, "motion")
    (onnx_frames,) = sessions["render"].run(None, render_inputs(state, motion))
    assert_close(onnx_frames, frames, "frames")
    (chained,) = sessions["render"].run(None, {"feature": feature, "appearance": appearance,
                                              "source_motion": source_motion, "motion": onnx_motion})
    assert_close(chained, frames, "frames (all graphs in onnxruntime)")


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_gather_sampler_matches_grid_sample(padding_mode, align_corners):
    """The warp reference's sampler="gather" (what grid_sample="gather" exports) gives
    F.grid_sample's values, for points inside, on and far outside the volume."""
    generator = torch.Generator().manual_seed(3)
    volume = torch.randn(2, 5, 4, 6, 7, generator=generator)
    grid = torch.rand(2, 3, 5, 7, 3, generator=generator) * 3 - 1.5
    grid[0, 0, 0, :, 0] = torch.tensor([-1.0, 1.0, 0.0, 1 - 1 / 7, -1 + 1 / 7, 1e9, -1e9])
    expected = F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding_mode,
                             align_corners=align_corners)
    actual = grid_sample_3d_reference(volume, grid, padding_mode, align_corners)
    assert (actual - expected).abs().max() < 1e-5
    logits = torch.randn(2, 3, 4, 6, 7, generator=generator)
    displacement = torch.randn(2, 3, 3, 4, 6, 7, generator=generator) * 0.6
    mask = torch.rand(2, 1, 4, 6, 7, generator=generator)
    warps = {sampler: region_softmax_warp_reference(volume[:1], logits, displacement, mask, 0.1,
                                                    padding_mode, align_corners, sampler=sampler)
             for sampler in ("grid_sample", "gather")}
    assert (warps["gather"] - warps["grid_sample"]).abs().max() < 1e-5


def test_unknown_sampler_is_named():
    inputs = (torch.rand(1, 2, 2, 3, 3), torch.rand(1, 2, 2, 3, 3), torch.rand(1, 2, 3, 2, 3, 3),
              torch.rand(1, 1, 2, 3, 3))
    with pytest.raises(ValueError, match="sampler must be one of .*'grid_sample', 'gather'.*got 'nearest'"):
        region_softmax_warp_reference(*inputs, 0.0, sampler="nearest")


class _Sampler(torch.nn.Module):
    def forward(self, volume, grid):
        return (grid_sample_3d_reference(volume, grid, "border", False),
                grid_sample_3d_reference(volume, grid, "zeros", True))


@pytest.mark.filterwarnings("ignore::FutureWarning")   # raised inside torch.export
def test_gather_decomposition_in_onnxruntime(tmp_path):
    """The gather sampler in ONNX: Gather ops, no GridSample, opset 18, GridSample's values.
    (Exporting the whole render graph this way costs ~10 s of CPU; the graph is the render
    window with this sampler, checked in PyTorch by test_exported_render_module_matches_renderer.)"""
    generator = torch.Generator().manual_seed(4)
    volume = torch.randn(3, 5, 4, 6, 7, generator=generator)
    grid = torch.rand(3, 4, 6, 7, 3, generator=generator) * 3 - 1.5
    grid[0, 0, 0, :, 0] = torch.tensor([-1.0, 1.0, 0.0, 1 - 1 / 7, -1 + 1 / 7, 1e9, -1e9])
    program = torch.onnx.export(_Sampler().eval(), (volume, grid), None, dynamo=True, opset_version=18,
                                input_names=["volume", "grid"], output_names=["border", "zeros"],
                                verbose=False)
    model = program.model_proto
    onnx.checker.check_model(model)
    counts = node_counts(model)
    assert "GridSample" not in counts and counts.get("Gather", 0) >= 16   # 8 corners x 2 paddings
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18)}
    path = tmp_path / "sampler.onnx"
    onnx.save_model(model, str(path))
    border, zeros = session(path).run(None, {"volume": volume.numpy(), "grid": grid.numpy()})
    assert_close(border, F.grid_sample(volume, grid, padding_mode="border", align_corners=False), "border")
    assert_close(zeros, F.grid_sample(volume, grid, padding_mode="zeros", align_corners=True), "zeros")


@pytest.fixture(scope="module")
def featured_renderer(config):
    """The recipe's motion FiLM on (off in the paper's config): the decoder's motion branch."""
    torch.manual_seed(1)
    renderer = Renderer(config.renderer, motion_film=True)
    with torch.no_grad():
        for parameter in renderer.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return renderer.eval()


@pytest.mark.parametrize("grid_sample", ["onnx", "gather"])
@pytest.mark.parametrize("features", [False, True])
def test_exported_render_module_matches_renderer(renderer, featured_renderer, grid_sample, features):
    """The module behind the render graph (Renderer.render_window with the reference warp), in
    PyTorch, for both samplers, with and without the decoder's motion FiLM."""
    renderer = featured_renderer if features else renderer
    source, driving = clip(2, 3, seed=6)
    with torch.no_grad():
        state = renderer.encode_source(source)
        motion = renderer.encode_motion(driving)
        frames = renderer.render(state, motion)
    module = renderer_graph_modules(renderer, grid_sample)["render"]
    with exporting(renderer):
        exported_frames = module(state.feature, state.appearance, state.motion, motion)
    assert renderer.warp.backend is None
    assert_close(exported_frames.numpy(), frames, f"frames ({grid_sample})")


def test_export_restores_backends_and_mode(config):
    renderer = Renderer(config.renderer, backend="fast").train()
    modules = renderer_graph_modules(renderer)
    assert set(modules) == set(GRAPHS)
    with exporting(renderer):
        assert not renderer.training and renderer.warp.backend == "reference"
        assert renderer.dit.adanorm.backend == "reference"
    assert renderer.training and renderer.warp.backend == "fast" and renderer.dit.adanorm.backend == "fast"


def test_bad_arguments_write_nothing(renderer, tmp_path):
    out = tmp_path / "renderer.onnx"
    with pytest.raises(ValueError, match="opset 20"):
        export_renderer_onnx(renderer, out, opset=17)
    with pytest.raises(ValueError, match=">= 18"):
        export_renderer_onnx(renderer, out, opset=17, grid_sample="gather")
    with pytest.raises(ValueError, match="graphs"):
        export_renderer_onnx(renderer, out, ["decoder"])
    with pytest.raises(ValueError, match="graphs"):
        export_renderer_onnx(renderer, out, [])
    with pytest.raises(ValueError, match="grid_sample"):
        export_renderer_onnx(renderer, out, grid_sample="bilinear")
    with pytest.raises(TypeError, match="Renderer"):
        export_renderer_onnx(torch.nn.Linear(2, 2), out)
    with pytest.raises(ValueError, match="directory"):
        export_renderer_onnx(renderer, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert issubclass(ExportError, ValueError)


def test_graph_paths():
    assert graph_paths("a/r.onnx", ["render"]) == {"render": Path("a/r.onnx")}
    paths = graph_paths("a/r.onnx", ["encode_source", "render"])
    assert {k: str(v) for k, v in paths.items()} == {"encode_source": "a/r.encode_source.onnx",
                                                      "render": "a/r.render.onnx"}


def test_onnxruntime_refuses_wrong_shapes(exported):
    render = exported["sessions"]["render"]
    good = {"feature": np.zeros((1, 8, 4, 32, 32), np.float32), "appearance": np.zeros((1, 64), np.float32),
            "source_motion": np.zeros((1, 192), np.float32), "motion": np.zeros((1, 2, 192), np.float32)}
    assert render.run(None, good)[0].shape == (1, 2, 3, 64, 64)
    with pytest.raises(Exception, match="invalid dimensions for input: motion"):
        render.run(None, {**good, "motion": np.zeros((1, 2, 100), np.float32)})
    with pytest.raises(Exception, match="invalid dimensions for input: source"):
        exported["sessions"]["encode_source"].run(None, {"source": np.zeros((1, 3, 32, 32), np.float32)})


def test_cli_exports_a_checkpoint(renderer, config, tmp_path, capsys):
    """A stage-2 checkpoint (it carries the renderer); stage 1's reaches the same loader (the
    config check in test_cli_errors)."""
    checkpoint = tmp_path / "stage2.safetensors"
    save_checkpoint(str(checkpoint), kind="stage2", step=7, config=config_to_dict(config),
                    modules={"renderer": renderer}, with_rng=False)
    out = tmp_path / "motion.onnx"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--graph", "encode_motion"]) == 0
    assert capsys.readouterr().out.strip() == f"encode_motion: {out}"
    _, driving = clip(1, 3, seed=2)
    with torch.no_grad():
        expected = renderer.encode_motion(driving)
    (motion,) = session(out).run(None, {"frames": driving.numpy()})
    assert_close(motion, expected, "motion (from the checkpoint)")


def test_cli_random_weights(tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["--config", "tiny", "--out", str(out), "--graph", "encode_motion"]) == 0
    assert onnx.load(out).graph.output[0].name == "motion"


def test_cli_errors(renderer, config, tmp_path, capsys):
    out = tmp_path / "renderer.onnx"
    out.write_bytes(b"previous")

    def fails(argv, message):
        assert main(argv + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mim.export: error:") and message in err, err
        assert out.read_bytes() == b"previous"
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == ["renderer.onnx"]

    fails(["--checkpoint", str(tmp_path / "missing.safetensors")], "does not exist")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    fails(["--checkpoint", str(garbage)], "not a readable safetensors file")
    other = tmp_path / "other.safetensors"
    save_checkpoint(str(other), kind="discriminator", step=0, config=config_to_dict(config),
                    modules={"renderer": renderer}, with_rng=False)
    fails(["--checkpoint", str(other)], "not a renderer")
    stage1 = tmp_path / "stage1.safetensors"
    save_checkpoint(str(stage1), kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": renderer}, with_rng=False)
    fails(["--checkpoint", str(stage1), "--config", "base"], "another renderer config")
    fails([], "--checkpoint")
    fails(["--config", "tiny", "--opset", "16"], "opset")
    fails(["--config", "no-such-config"], "no-such-config")


def test_mim_cli_export_onnx_passes_its_arguments(tmp_path, capsys):
    from mim.cli import main

    out = tmp_path / "r.onnx"
    assert main(["export-onnx", "--config", "tiny", "--graph", "encode_motion", "--out", str(out)]) == 0
    assert out.is_file() and "encode_motion" in capsys.readouterr().out
    assert main(["export-onnx", "--config", "nope", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "nope" in capsys.readouterr().err
