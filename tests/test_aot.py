"""The AOT kernel library (tools/aot.py, csrc/, the MIM_BUILD_AOT part of CMakeLists.txt).

Nothing here runs on a GPU. The generator is run (Triton's interpreter off, fp32 only: 24
variants x 2 targets), its C sources are read back (API, cubins), CMake builds the library, the
demo and two test helpers, and every launcher is called through the probe against a fake
libcuda.so (csrc/testing/mock_libcuda.c) that records module loads and launches: each recorded
launch is compared with the one the op's Python launcher makes (its Triton kernel replaced by a
recorder, on meta tensors) — the same cubin variant, grid, block, shared memory and argument
values in the kernel's order.
"""
import ctypes.util
import hashlib
import importlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels  # noqa: F401  (registers every op's kernels)
from kernels import registered_kernels
from tools.aot import OPS, runtime_args

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = "fp32"
# The library's default targets are sm_80, sm_90a, sm_100a and sm_120a (tools.compile_report's
# DEFAULT_TARGETS); the tests build two, which keeps the generation and the CMake build at about
# half the compiles. sm_100a and sm_120a devices reach their own cubin slots (NOT_COMPILED here).
TARGETS = ("sm_80", "sm_90a")
TARGETS_ARG = "80,90"
PUBLIC_FUNCTIONS = {"mim_kernels_init", "mim_kernels_version", "mim_kernels_strerror",
                    "mim_kernels_last_error", "mim_kernels_release_context",
                    "mim_grid_sample_3d_fwd", "mim_region_softmax_warp_fwd",
                    "mim_deviation_adanorm_fwd", "mim_selective_scan_fwd"}
STATUS = {"MIM_SUCCESS": 0, "MIM_ERROR_NO_DRIVER": 1, "MIM_ERROR_DRIVER_INIT": 2,
          "MIM_ERROR_NO_CONTEXT": 3, "MIM_ERROR_UNSUPPORTED_DEVICE": 4,
          "MIM_ERROR_INVALID_ARGUMENT": 5, "MIM_ERROR_MISALIGNED": 6, "MIM_ERROR_UNSUPPORTED": 7,
          "MIM_ERROR_NOT_COMPILED": 8, "MIM_ERROR_CUDA": 9, "MIM_ERROR_OUT_OF_HOST_MEMORY": 10}
STREAM = 0x5EED0  # the probe's fake stream
NO_DRIVER = "/nonexistent/libcuda.so.1"
TRITON_INCLUDE = Path(importlib.import_module("triton").__file__).parent / "backends/nvidia/include"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def _run(command, **kwargs):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    done = _run([sys.executable, "-m", "tools.aot", "--out-dir", out, "--dtypes", DTYPES,
                 "--targets", TARGETS_ARG, "--jobs", "2"], cwd=REPO_ROOT, env=_env())
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _configure_and_build(build, *options):
    configure = _run(["cmake", "-S", REPO_ROOT, "-B", build, "-DMIM_BUILD_AOT=ON",
                      f"-DMIM_AOT_DTYPES={DTYPES}", f"-DMIM_AOT_TARGETS={TARGETS_ARG}",
                      "-DMIM_AOT_JOBS=2",
                      f"-DMIM_PYTHON={sys.executable}", *options], env=_env())
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compiled = _run(["cmake", "--build", build, "-j", "2"], env=_env())
    assert compiled.returncode == 0, compiled.stdout[-4000:] + compiled.stderr[-4000:]
    return configure.stdout


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The default configuration: cuda.h from the CUDA toolkit, or Triton's copy."""
    directory = tmp_path_factory.mktemp("cmake")
    output = _configure_and_build(directory)
    skipped = re.search(r"skipping libmim_kernels: (.*)", output)
    return {"dir": directory, "output": output, "built": skipped is None,
            "skip_reason": skipped.group(1) if skipped else None}


# ---------------------------------------------------------------------------------------------
# Reading the generated C
# ---------------------------------------------------------------------------------------------

_CUBIN = re.compile(r"static _Alignas\(16\) const unsigned char (\w+)\[(\d+)\] =\n"
                    r"((?:    \"[^\"\n]*\"\n)*    \"[^\"\n]*\";\n)")


def embedded_cubins(source: str):
    """{symbol: bytes} of every cubin array in a generated source (the arrays have one byte more
    than the cubin: the string literal's terminating NUL)."""
    arrays = {}
    for symbol, size, body in _CUBIN.findall(source):
        hexed = "".join(line.strip().strip('";') for line in body.splitlines())
        data = bytes.fromhex(hexed.replace("\\x", ""))
        assert len(data) + 1 == int(size), symbol
        arrays[symbol] = data
    return arrays


def fnv1a64(data: bytes) -> str:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def _declared_functions(header: str):
    return re.findall(r"^MIM_KERNELS_API [\w\s\*]*?\b(mim_\w+)\(", header, re.MULTILINE)


def test_header_declares_the_api_and_sources_define_it(generated):
    header = (generated / "mim_kernels.h").read_text()
    assert 'extern "C" {' in header and "#ifdef __cplusplus" in header
    assert "#include <cuda.h>" not in header  # plain C: no CUDA header needed by users
    declared = _declared_functions(header)
    assert len(declared) == len(set(declared)) and set(declared) == PUBLIC_FUNCTIONS
    for name, value in STATUS.items():
        assert re.search(rf"\b{name} = {value}\b", header), name
    sources = {p.name: p.read_text() for p in generated.glob("*.c")}
    assert set(sources) == {"mim_kernels_runtime.c", *(op.source_name for op in OPS)}
    for function in declared:
        definitions = [name for name, text in sources.items()
                       if re.search(rf"^MIM_KERNELS_API [\w\s\*]*?\b{function}\([^;{{]*\)\s*\{{",
                                    text, re.MULTILINE)]
        assert len(definitions) == 1, (function, definitions)
    # each launcher is defined in its op's file and uses the kernel's name for the cubin lookup
    for op in OPS:
        assert f"{op.function}(" in sources[op.source_name]
        assert f'"{op.kernel}"' in sources[op.source_name]
    assert "dlopen" in sources["mim_kernels_runtime.c"]
    for call in ("cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel"):
        assert f'"{call}"' in sources["mim_kernels_runtime.c"]


def test_sources_embed_both_targets_cubins_for_every_variant(generated):
    import triton

    manifest = json.loads((generated / "mim_kernels_manifest.json").read_text())
    assert manifest["targets"] == list(TARGETS) and manifest["dtypes"] == [DTYPES]
    registry = {(e.op, e.name): e for e in registered_kernels()}
    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    by_op = {k["op"]: k for k in manifest["kernels"]}
    assert set(by_op) == {op.op for op in OPS}
    for op in OPS:
        record = by_op[op.op]
        entry = registry[(op.op, op.kernel)]
        expected = [(d, dict(c.constexprs), c.num_warps) for d, _, c in entry.variants()
                    if d == DTYPES]
        assert [(v["dtype"], v["constexprs"], v["num_warps"]) for v in record["variants"]] \
            == expected, op.op
        arrays = embedded_cubins((generated / op.source_name).read_text())
        assert len(arrays) == len(expected) * len(TARGETS)
        for variant in record["variants"]:
            assert set(variant["cubins"]) == set(TARGETS)
            for target, cubin in variant["cubins"].items():
                data = arrays[cubin["symbol"]]
                assert len(data) == cubin["bytes"] > 1000 and data[:4] == b"\x7fELF"
                assert hashlib.sha256(data).hexdigest() == cubin["sha256"]
                path = generated / f"{cubin['symbol']}.cubin"
                path.write_bytes(data)
                listed = _run([cuobjdump, "--list-elf", path])
                assert f".{target}.cubin" in listed.stdout, listed.stdout + listed.stderr
                path.unlink()


def test_generator_refuses_the_interpreter_and_bad_arguments(tmp_path, capsys):
    base = [sys.executable, "-m", "tools.aot", "--out-dir", tmp_path]
    interpreted = _run(base, cwd=REPO_ROOT, env=_env(TRITON_INTERPRET="1"))
    assert interpreted.returncode == 2 and "TRITON_INTERPRET" in interpreted.stderr
    # argument errors are caught by the parser, before any compiling: in-process (3 s each as
    # subprocesses)
    from tools.aot import main

    for bad, named in ((["--dtypes", "fp64"], "fp64"), (["--targets", "86"], "'86'"),
                       (["--op", "no_such_op"], "no_such_op")):
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in base[3:] + bad])
        assert exited.value.code == 2, bad
        assert named in capsys.readouterr().err, bad
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# CMake
# ---------------------------------------------------------------------------------------------


def _sources_generated(directory: Path):
    aot = directory / "aot"
    for name in ("mim_kernels.h", "mim_kernels_runtime.c", *(op.source_name for op in OPS)):
        assert (aot / name).stat().st_size > 0, name


def test_cmake_builds_the_library_and_the_demo(build):
    directory = build["dir"]
    _sources_generated(directory)
    if not build["built"]:  # no cuda.h anywhere: CMake must say why it skipped the library
        assert build["skip_reason"].startswith("no cuda.h"), build["output"]
        assert not (TRITON_INCLUDE / "cuda.h").exists()  # else CMake should have used it
        assert not (directory / "libmim_kernels.so").exists()
        return
    assert re.search(r"libmim_kernels: cuda.h from .+: /\S+", build["output"])
    library, demo = directory / "libmim_kernels.so", directory / "mim_kernels_demo"
    assert library.is_file() and demo.is_file()
    exported = _run(["nm", "-D", "--defined-only", library]).stdout
    exported = {line.split()[-1] for line in exported.splitlines() if " T " in line}
    assert exported == PUBLIC_FUNCTIONS  # internals (mim__*) are hidden
    undefined = _run(["nm", "-D", "--undefined-only", library]).stdout
    assert "dlopen" in undefined and "dlsym" in undefined
    assert not re.search(r"\bcu[A-Z]\w+", undefined)  # the driver is resolved at run time
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", _run(["readelf", "-d", library]).stdout)
    assert needed and not [n for n in needed if "cuda" in n], needed
    for binary in (library, demo):
        linked = _run(["ldd", binary])
        assert linked.returncode == 0 and "not found" not in linked.stdout, linked.stdout
        assert "libcuda" not in linked.stdout
    assert "libmim_kernels.so" in _run(["ldd", demo]).stdout
    demo_symbols = _run(["nm", "--undefined-only", demo]).stdout
    assert "mim_grid_sample_3d_fwd" in demo_symbols and "mim_kernels_init" in demo_symbols
    cxx = shutil.which("c++")
    if cxx:  # the header is usable from C++ (a plugin's language), beside cuda.h's CUstream
        include = re.search(r"libmim_kernels: cuda.h from .+: (/\S+)", build["output"]).group(1)
        probe = directory / "header_check.cpp"
        probe.write_text(
            '#include <cuda.h>\n#include "mim_kernels.h"\n'
            "mim_status launch(CUstream stream) {\n"
            "  return mim_grid_sample_3d_fwd(MIM_FLOAT32, nullptr, nullptr, nullptr, 1, 1, 1, 1,"
            " 1, 1, 1, 1, MIM_PADDING_ZEROS, 0, stream);\n}\n")
        done = _run([cxx, "-std=c++11", "-fsyntax-only", "-Wall", "-Werror", "-I",
                     directory / "aot", "-I", include, probe])
        assert done.returncode == 0, done.stderr


def test_cmake_without_cuda_headers_skips_the_library_and_still_generates(tmp_path):
    empty = tmp_path / "no_cuda_here"
    empty.mkdir()
    directory = tmp_path / "build"
    output = _configure_and_build(directory, f"-DMIM_CUDA_INCLUDE_DIR={empty}")
    assert f"skipping libmim_kernels: MIM_CUDA_INCLUDE_DIR={empty} holds no cuda.h" in output
    _sources_generated(directory)
    assert not (directory / "libmim_kernels.so").exists()
    assert not (directory / "mim_kernels_demo").exists()


def test_demo_without_a_cuda_driver_exits_2_and_says_so(build):
    if not build["built"]:  # as in the test above: no cuda.h to build the demo with
        assert not (TRITON_INCLUDE / "cuda.h").exists(), build["skip_reason"]
        return
    demo = build["dir"] / "mim_kernels_demo"
    done = _run([demo], env=_env(MIM_KERNELS_LIBCUDA=NO_DRIVER))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot run here: no CUDA driver" in done.stderr and NO_DRIVER in done.stderr
    assert "mim_kernels 1 (Triton" in done.stdout
    if ctypes.util.find_library("cuda") is None:  # this machine: no driver at all
        plain = _run([demo], env=_env())
        assert plain.returncode == 2 and "no CUDA driver" in plain.stderr, plain.stderr


def test_demo_checks_against_what_torch_computes(build):
    """The demo's CPU reference (what the GPU result must match) is F.grid_sample's result."""
    if not build["built"]:
        assert not (TRITON_INCLUDE / "cuda.h").exists(), build["skip_reason"]
        return
    done = _run([build["dir"] / "mim_kernels_demo", "--cpu-only"],
                env=_env(MIM_KERNELS_LIBCUDA=NO_DRIVER))
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    shape = [int(x) for x in rows[0][1:]]
    N, C, D, H, W, Do, Ho, Wo = shape
    # float32 values printed with 9 digits: back to the same float32, then exactly to double
    values = {row[0]: torch.tensor([float(x) for x in row[1:]], dtype=torch.float32).double()
              for row in rows[1:3]}
    volume = values["input"].reshape(N, C, D, H, W)
    grid = values["grid"].reshape(N, Do, Ho, Wo, 3)
    assert grid.abs().max() > 1  # some points sample outside the volume
    expected = [row for row in rows if row[0] == "expected"]
    assert len(expected) == 4
    for _, padding, align, *numbers in expected:
        torch_out = torch.nn.functional.grid_sample(volume, grid, mode="bilinear",
                                                    padding_mode=padding,
                                                    align_corners=bool(int(align)))
        demo_out = torch.tensor([float(x) for x in numbers], dtype=torch.float64)
        torch.testing.assert_close(demo_out.reshape(torch_out.shape), torch_out, rtol=0,
                                   atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The launchers against the fake driver
# ---------------------------------------------------------------------------------------------


class Probe:
    """Runs the probe against the mock driver and parses what both report."""

    def __init__(self, build, tmp_path, binary=None):
        self.dir = build["dir"]
        self.binary = binary or self.dir / "mim_kernels_probe"
        self.log = tmp_path / "driver.log"
        manifest = json.loads((self.dir / "aot" / "mim_kernels_manifest.json").read_text())
        self.manifest = {k["op"]: k for k in manifest["kernels"]}
        self._hashes = {}

    def run(self, *args, cc=90, sms=132, param_sizes="", **env):
        self.log.unlink(missing_ok=True)
        variables = {"MIM_KERNELS_LIBCUDA": str(self.dir / "libmim_mock_cuda.so"),
                     "MIM_MOCK_CUDA_LOG": str(self.log), "MIM_MOCK_CUDA_CC": str(cc),
                     "MIM_MOCK_CUDA_SMS": str(sms), "MIM_MOCK_CUDA_PARAM_SIZES": param_sizes}
        variables.update(env)
        done = _run([self.binary, *map(str, args)], env=_env(**variables))
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        pointers = {m[0]: int(m[1], 16) for m in re.findall(r"^ptr (\w+) (0x[0-9a-f]+)$",
                                                            done.stdout, re.MULTILINE)}
        statuses = [int(line.split()[1]) for line in lines if line.startswith("status ")]
        details = [line[len("detail "):] for line in lines if line.startswith("detail ")]
        log = self.log.read_text().splitlines() if self.log.exists() else []
        return statuses, details, pointers, log

    def variant_of(self, op: str, fnv: str):
        """(variant record, target) of the cubin whose FNV-1a hash the mock logged."""
        if op not in self._hashes:
            arrays = embedded_cubins((self.dir / "aot" / self.manifest[op]["source"]).read_text())
            self._hashes[op] = {fnv1a64(data): symbol for symbol, data in arrays.items()}
        symbol = self._hashes[op][fnv]
        for variant in self.manifest[op]["variants"]:
            for target, cubin in variant["cubins"].items():
                if cubin["symbol"] == symbol:
                    return variant, target, cubin
        raise AssertionError(f"no variant has cubin {symbol}")


@pytest.fixture
def probe(build, tmp_path):
    # Triton's wheel ships cuda.h, so the default configuration always builds the library.
    assert build["built"], f"libmim_kernels was not built: {build['skip_reason']}"
    return Probe(build, tmp_path)


class Recorder:
    """Stands in for a @triton.jit kernel: records ``kernel[grid](*args, **kwargs)``; has the
    kernel's ``__name__`` (launchers look tuned winners up by it)."""

    def __init__(self, name: str):
        self.__name__ = name
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((tuple(grid), args, kwargs))


def _meta(*shape):
    return torch.empty(shape, device="meta", dtype=torch.float32)


# Kernel pointer arguments that the Python launcher allocates (or copies, for beta), by the
# probe's name of the C launcher's pointer.
_ALLOCATED = {"out_ptr": "out", "mean_ptr": "mean", "rstd_ptr": "rstd",
              "checkpoint_ptr": "checkpoints", "last_state_ptr": "last_state",
              "beta_ptr": "beta"}


def python_launch(op, monkeypatch, sms, **sizes):
    """The one launch the op's Python launcher makes: (grid, named inputs, args, kwargs)."""
    spec = next(o for o in OPS if o.op == op)
    module = importlib.import_module(spec.module)
    recorder = Recorder(spec.kernel)
    monkeypatch.setattr(module, spec.kernel, recorder)
    if op == "grid_sample_3d":
        s = sizes
        inputs = {"input": _meta(s["N"], s["C"], s["D"], s["H"], s["W"]),
                  "grid": _meta(s["N"], s["Do"], s["Ho"], s["Wo"], 3)}
        module.grid_sample_3d_forward_triton(inputs["input"], inputs["grid"],
                                             s["padding"] == "border", bool(s["align"]))
    elif op == "region_softmax_warp":
        s = sizes
        inputs = {"feature": _meta(s["Fb"], s["C"], s["D"], s["H"], s["W"]),
                  "logits": _meta(s["B"], s["R"], s["D"], s["H"], s["W"]),
                  "displacement": _meta(s["B"], s["R"], 3, s["D"], s["H"], s["W"]),
                  "mask": _meta(s["B"], 1, s["D"], s["H"], s["W"]), "beta": _meta()}
        module.warp_forward_triton(inputs["feature"], inputs["logits"], inputs["displacement"],
                                   inputs["mask"], inputs["beta"], s["padding"], bool(s["align"]))
    elif op == "deviation_adanorm":
        s = sizes
        inputs = {"v": _meta(s["B"], s["T"], s["G"]),
                  "scale": _meta(s["B"], s["T"] - 1, s["R"], s["G"]),
                  "shift": _meta(s["B"], s["T"] - 1, s["R"], s["G"])}
        module.adanorm_forward_triton(inputs["v"], inputs["scale"], inputs["shift"], s["eps"])
    else:
        s = sizes
        monkeypatch.setattr(module, "SM_COUNT_CPU", sms)  # the planned-for GPU's SMs
        batch, dim, L, N, groups = s["batch"], s["dim"], s["L"], s["N"], s["groups"]
        inputs = {"u": _meta(batch, dim, L), "delta": _meta(batch, dim, L),
                  "z": _meta(batch, dim, L), "A": _meta(dim, N),
                  "B": _meta(batch, groups, N, L), "C": _meta(batch, groups, N, L),
                  "D": _meta(dim), "delta_bias": _meta(dim), "initial_state": _meta(batch, dim, N)}
        for name in s["absent"]:
            inputs[name] = None
        module.selective_scan_forward_triton(
            inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
            inputs["z"], inputs["delta_bias"], bool(s["softplus"]), inputs["initial_state"])
    assert len(recorder.calls) == 1, recorder.calls
    grid, args, kwargs = recorder.calls[0]
    return grid, {k: v for k, v in inputs.items() if v is not None}, args, kwargs


def expected_params(op, args, inputs, pointers):
    """The launch parameters, as the integers the mock prints, of the Python launch ``args``."""
    entry = next(e for e in registered_kernels() if e.op == op and e.name.endswith("fwd_kernel"))
    signature = {k: v.replace("{dtype}", "fp32") for k, v in entry.signature.items()}
    params = runtime_args(entry, signature)
    assert len(args) == len(params)
    assert [p.name for p in params] == entry.kernel.arg_names[:len(args)]
    by_identity = {id(t): name for name, t in inputs.items()}
    values, sizes = [], []
    for param, value in zip(params, args):
        size = 8 if param.is_pointer or param.type == "i64" else 4
        if isinstance(value, torch.Tensor):
            name = by_identity.get(id(value), _ALLOCATED.get(param.name))
            assert name is not None, param.name
            values.append(pointers[name])
        elif isinstance(value, float):
            values.append(struct.unpack("<I", struct.pack("<f", value))[0])
        else:
            values.append(int(value) & ((1 << (8 * size)) - 1))
        sizes.append(size)
    return values + [0, 0], ",".join(map(str, sizes + [8, 8]))


def _probe_args(op, s):
    if op == "grid_sample_3d":
        return [s[k] for k in ("N", "C", "D", "H", "W", "Do", "Ho", "Wo", "padding", "align")]
    if op == "region_softmax_warp":
        return [s[k] for k in ("B", "Fb", "C", "R", "D", "H", "W", "padding", "align")]
    if op == "deviation_adanorm":
        return [s[k] for k in ("B", "T", "R", "G")] + [repr(s["eps"])]
    return [s[k] for k in ("batch", "dim", "L", "N", "groups", "softplus")]


CASES = [
    ("grid_sample_3d", dict(N=2, C=3, D=4, H=5, W=6, Do=3, Ho=4, Wo=5, padding="zeros", align=0)),
    ("grid_sample_3d", dict(N=1, C=5, D=7, H=9, W=11, Do=20, Ho=10, Wo=3, padding="border",
                            align=1)),
    ("grid_sample_3d", dict(N=3, C=1, D=2, H=2, W=2, Do=1, Ho=1, Wo=129, padding="zeros",
                            align=1)),
    ("region_softmax_warp", dict(B=2, Fb=1, C=4, R=5, D=3, H=8, W=8, padding="zeros", align=0)),
    ("region_softmax_warp", dict(B=3, Fb=3, C=2, R=1, D=5, H=7, W=9, padding="border", align=1)),
    ("region_softmax_warp", dict(B=1, Fb=1, C=3, R=2, D=2, H=3, W=4, padding="border", align=0)),
    ("deviation_adanorm", dict(B=2, T=5, R=10, G=768, eps=1e-5)),
    ("deviation_adanorm", dict(B=1, T=2, R=3, G=16, eps=0.1)),
    ("deviation_adanorm", dict(B=3, T=4, R=1, G=272, eps=1e-6)),
    ("deviation_adanorm", dict(B=1, T=3, R=2, G=8192, eps=2.5e-3)),
    ("selective_scan", dict(batch=2, dim=64, L=100, N=16, groups=1, softplus=1, absent=())),
    ("selective_scan", dict(batch=1, dim=8, L=33, N=20, groups=2, softplus=0, absent=("z", "D"))),
    ("selective_scan", dict(batch=8, dim=1024, L=64, N=64, groups=1, softplus=1,
                            absent=("delta_bias", "initial_state"))),
    ("selective_scan", dict(batch=1, dim=4, L=0, N=1, groups=1, softplus=0,
                            absent=("z", "D", "delta_bias", "initial_state"))),
]


@pytest.mark.parametrize("cc, sms", [(90, 132), (86, 16)])
@pytest.mark.parametrize("op, sizes", CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_launch_matches_the_python_launcher(probe, monkeypatch, op, sizes, cc, sms):
    grid, inputs, args, kwargs = python_launch(op, monkeypatch, sms, **sizes)
    nulls = [a for name in sizes.get("absent", ()) for a in ("--null", name)]
    # a first run gives the probe's fake device addresses (and must launch too)
    statuses, details, pointers, _ = probe.run(*nulls, op, DTYPES, *_probe_args(op, sizes),
                                               cc=cc, sms=sms)
    assert statuses == [0], details
    values, param_sizes = expected_params(op, args, inputs, pointers)
    statuses, details, _, log = probe.run(*nulls, "--repeat", "2", "--release", op, DTYPES,
                                          *_probe_args(op, sizes), cc=cc, sms=sms,
                                          param_sizes=param_sizes)
    assert statuses == [0, 0, 0], details
    loads = [line for line in log if line.startswith("load ")]
    launches = [line for line in log if line.startswith("launch ")]
    assert len(loads) == 1 and len(launches) == 2 and log[-1] == "unload", log  # loaded once
    assert launches[0] == launches[1]
    size, fnv = re.fullmatch(r"load bytes=(\d+) fnv1a64=([0-9a-f]+)", loads[0]).groups()
    variant, target, cubin = probe.variant_of(op, fnv)
    assert target == ("sm_90a" if cc == 90 else "sm_80")
    assert int(size) == cubin["bytes"]
    constexprs = {k: v for k, v in kwargs.items()
                  if k not in ("num_warps", "num_stages", "enable_fp_fusion", "maxnreg")}
    assert kwargs.get("maxnreg") is None  # no register limit on this (meta, not CUDA) device
    assert variant["constexprs"] == constexprs
    assert variant["num_warps"] == kwargs["num_warps"]
    launch = re.fullmatch(r"launch name=(\w+) grid=(\S+) block=(\S+) shared=(\d+) "
                          r"stream=(\S+) params=(\S+)", launches[0])
    name, launch_grid, block, shared, stream, params = launch.groups()
    assert name == probe.manifest[op]["kernel"]
    assert tuple(map(int, launch_grid.split(","))) == tuple(grid) + (1,) * (3 - len(grid))
    assert block == f"{32 * kwargs['num_warps']},1,1"
    assert int(shared) == cubin["shared"] and int(stream, 16) == STREAM
    assert [int(p, 16) for p in params.split(",")] == values


def test_selective_scan_picks_the_config_by_the_device_sm_count(probe, monkeypatch):
    sizes = dict(batch=4, dim=256, L=40, N=16, groups=1, softplus=0, absent=())
    chosen = {}
    for sms in (16, 132):
        _, _, _, kwargs = python_launch("selective_scan", monkeypatch, sms, **sizes)
        _, _, _, log = probe.run("selective_scan", DTYPES, *_probe_args("selective_scan", sizes),
                                 sms=sms)
        fnv = re.search(r"fnv1a64=(\w+)", "\n".join(log)).group(1)
        variant, _, _ = probe.variant_of("selective_scan", fnv)
        assert variant["constexprs"]["BLOCK_D"] == kwargs["BLOCK_D"]
        chosen[sms] = kwargs["BLOCK_D"]
    assert chosen[16] != chosen[132]  # the case really exercises both configs


ERROR_CASES = [
    # (probe arguments, mock environment, expected status, words in the detail)
    (["grid_sample_3d", "fp16", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_NOT_COMPILED", "dtypes fp32; targets sm_80, sm_90a"),
    (["grid_sample_3d", "7", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "dtype must be"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "9", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "padding must be"),
    (["grid_sample_3d", "fp32", 1, 1, 0, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "non-empty spatial"),
    (["grid_sample_3d", "fp32", 1, 2 ** 31, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_UNSUPPORTED", "C=2147483648 is beyond the int32 range"),
    (["grid_sample_3d", "fp32", 70000, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_UNSUPPORTED", "exceeds CUDA's"),
    (["--misalign", "grid", "grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_MISALIGNED", "grid=0x"),
    (["--null", "out", "grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "out is NULL"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {"cc": 75},
     "MIM_ERROR_UNSUPPORTED_DEVICE", "compute capability 7.5"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {"cc": 103},
     "MIM_ERROR_UNSUPPORTED_DEVICE", "compute capability 10.3"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {"cc": 100},
     "MIM_ERROR_NOT_COMPILED", "was not compiled for sm_100a"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0], {"cc": 120},
     "MIM_ERROR_NOT_COMPILED", "was not compiled for sm_120a"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0],
     {"MIM_MOCK_CUDA_NO_CONTEXT": "1"}, "MIM_ERROR_NO_CONTEXT", "cuCtxSetCurrent"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0],
     {"MIM_MOCK_CUDA_INIT": "100"}, "MIM_ERROR_DRIVER_INIT", "CUDA_ERROR_NO_DEVICE"),
    (["grid_sample_3d", "fp32", 1, 1, 2, 2, 2, 1, 1, 1, "zeros", 0],
     {"MIM_KERNELS_LIBCUDA": NO_DRIVER}, "MIM_ERROR_NO_DRIVER", NO_DRIVER),
    (["region_softmax_warp", "fp32", 2, 3, 1, 1, 2, 2, 2, "zeros", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "batch 1 (shared by every frame) or B"),
    (["region_softmax_warp", "fp32", 2, 2, 1, 0, 2, 2, 2, "zeros", 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "R >= 1"),
    (["deviation_adanorm", "fp32", 1, 3, 2, 24, "1e-5"], {},
     "MIM_ERROR_UNSUPPORTED", "G=24 is not a multiple of 16"),
    (["deviation_adanorm", "fp32", 1, 3, 2, 8208, "1e-5"], {},
     "MIM_ERROR_UNSUPPORTED", "G <= 8192"),
    (["deviation_adanorm", "fp32", 1, 1, 2, 16, "1e-5"], {},
     "MIM_ERROR_INVALID_ARGUMENT", "T >= 2"),
    (["deviation_adanorm", "fp32", 1, 3, 2, 16, "0"], {},
     "MIM_ERROR_INVALID_ARGUMENT", "eps must be"),
    (["selective_scan", "fp32", 1, 6, 8, 16, 4, 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "divide dim=6"),
    (["selective_scan", "fp32", 1, 8, 8, 65, 1, 0], {},
     "MIM_ERROR_UNSUPPORTED", "N <= 64"),
    (["--null", "A", "selective_scan", "fp32", 1, 8, 8, 16, 1, 0], {},
     "MIM_ERROR_INVALID_ARGUMENT", "A is NULL"),
]


@pytest.mark.parametrize("args, mock, status, words", ERROR_CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_launcher_errors(probe, args, mock, status, words):
    mock = dict(mock)
    options = {k: mock.pop(k) for k in ("cc",) if k in mock}
    statuses, details, _, log = probe.run(*args, **options, **mock)
    assert statuses == [STATUS[status]], details
    assert words in details[0], details
    assert not [line for line in log if line.startswith("launch")]


@pytest.mark.parametrize("args", [
    ["grid_sample_3d", "fp32", 0, 3, 2, 2, 2, 4, 4, 4, "zeros", 0],
    ["grid_sample_3d", "fp32", 2, 0, 2, 2, 2, 4, 4, 4, "zeros", 0],
    ["region_softmax_warp", "fp32", 2, 2, 0, 3, 2, 2, 2, "zeros", 0],
    ["deviation_adanorm", "fp32", 2, 3, 0, 16, "1e-5"],
    ["selective_scan", "fp32", 0, 8, 16, 16, 1, 0],
])
def test_empty_outputs_launch_nothing_and_need_no_driver(probe, args):
    statuses, details, _, log = probe.run("--null", "out", *args,
                                          MIM_KERNELS_LIBCUDA=NO_DRIVER)
    assert statuses == [0], details
    assert log == []


def test_version_and_strerror(probe):
    cubins = len(TARGETS) * sum(1 for e in registered_kernels() for op in OPS
                                if (e.op, e.name) == (op.op, op.kernel)
                                for dtype, _, _ in e.variants() if dtype == DTYPES)
    done = _run([probe.dir / "mim_kernels_probe", "version"], env=_env())
    assert re.fullmatch(rf"mim_kernels 1 \(Triton [\d.]+; sm_80, sm_90a; fp32; .+; {cubins} "
                        r"cubins, sha256 [0-9a-f]{16}\)\n", done.stdout), done.stdout
    text = _run([probe.dir / "mim_kernels_probe", "strerror"], env=_env()).stdout
    messages = dict(line.split(" ", 1) for line in text.splitlines())
    assert messages["1"].startswith("no CUDA driver")
    assert len({messages[str(code)] for code in STATUS.values()}) == len(STATUS)
    assert messages["11"] == "unknown mim_status"


def test_a_partial_build_says_what_it_lacks(build, tmp_path):
    """--op and --targets leave variants out; their launchers return MIM_ERROR_NOT_COMPILED
    naming what is missing (here built by hand with the C compiler CMake found: the generated
    directory is self-contained)."""
    assert build["built"], build["skip_reason"]
    out = tmp_path / "aot"
    done = _run([sys.executable, "-m", "tools.aot", "--out-dir", out, "--op", "grid_sample_3d",
                 "--targets", "90", "--dtypes", DTYPES, "--jobs", "1"], cwd=REPO_ROOT, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "mim_kernels_manifest.json").read_text())
    assert manifest["ops"] == ["grid_sample_3d"] and manifest["targets"] == ["sm_90a"]
    for op in OPS[1:]:
        source = (out / op.source_name).read_text()
        assert not embedded_cubins(source) and "0, NULL};" in source
    cache = (build["dir"] / "CMakeCache.txt").read_text()
    compiler = re.search(r"^CMAKE_C_COMPILER:\w+=(.+)$", cache, re.MULTILINE).group(1)
    include = re.search(r"libmim_kernels: cuda.h from .+: (/\S+)", build["output"]).group(1)
    binary = tmp_path / "probe"
    compiled = _run([compiler, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", out, "-I",
                     include, *sorted(out.glob("*.c")),
                     REPO_ROOT / "csrc/testing/mim_kernels_probe.c", "-ldl", "-lpthread", "-o",
                     binary])
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    probe = Probe(build, tmp_path, binary)
    sample = ["grid_sample_3d", DTYPES, 1, 2, 3, 3, 3, 2, 2, 2, "border", 1]
    statuses, details, _, log = probe.run(*sample, cc=90)
    assert statuses == [0] and [line for line in log if line.startswith("launch")], details
    statuses, details, _, log = probe.run(*sample, cc=80)
    assert statuses == [STATUS["MIM_ERROR_NOT_COMPILED"]]
    assert "was not compiled for sm_80" in details[0] and "targets sm_90a" in details[0]
    statuses, details, _, _ = probe.run("selective_scan", DTYPES, 1, 8, 8, 16, 1, 0)
    assert statuses == [STATUS["MIM_ERROR_NOT_COMPILED"]]
    assert "generated for ops grid_sample_3d;" in details[0], details
