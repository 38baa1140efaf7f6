"""Index arithmetic that a product of sizes can push past 2^31 is int64 in the Triton kernels of
grid_sample_3d, region_softmax_warp and deviation_adanorm.

Proving it on tensors would take 8 GB; instead each kernel is lowered to Triton's typed IR (TTIR,
target sm_90, no GPU needed) and no 32-bit integer multiply may remain: every product of sizes,
program ids and loop counters (``pid * BLOCK``, ``r * G``, ``(j + 1) * G``, ``H * W``) must be
done in int64, the width the address offsets then carry. The kernels are compiled in a child
process because this one runs Triton's interpreter, which replaces ``@triton.jit`` functions.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OPS = ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm")

# Child process: every kernel of OPS, one dtype, the configs with the fewest and the most of its
# boolean constexpr flags on (the flags select code; block sizes do not) → the source lines of its
# i32 multiplies, as JSON.
_FIND_I32_MULTIPLIES = r"""
import json, re, sys
import kernels.grid_sample_3d.triton_kernels, kernels.region_softmax_warp.triton_kernels
import kernels.deviation_adanorm.triton_kernels
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from kernels import registered_kernels
from tools.compile_report import ast_source

target = GPUTarget("cuda", 90, 32)
backend = CUDABackend(target)
found = {}
for entry in registered_kernels():
    if entry.op not in sys.argv[1:]:
        continue
    variants = [(signature, config) for dtype, signature, config in entry.variants()
                if dtype == entry.dtypes[0]]
    def switched_on(variant):
        return sum(v is True for v in variant[1].constexprs.values())
    for signature, config in {id(v[1]): v for v in (min(variants, key=switched_on),
                                                    max(variants, key=switched_on))}.values():
        flags = {k: v for k, v in config.constexprs.items() if isinstance(v, bool)}
        options = backend.parse_options({"num_warps": config.num_warps})
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        module = ast_source(entry.kernel, signature, config).make_ir(
            target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
            context)
        text = module.str()
        locations = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)$", text, re.MULTILINE))

        def where(loc):
            for _ in range(16):  # named locations point at the file location: "name"(#locN)
                target_loc = re.search(r"(#loc\d*)", locations.get(loc, ""))
                if target_loc is None:
                    break
                loc = target_loc.group(1)
            file_line = re.match(r'"(.*)":(\d+):\d+', locations.get(loc, ""))
            return f"{file_line.group(1)}:{file_line.group(2)}" if file_line else loc

        multiplies = found.setdefault(entry.name, {})
        for line in text.splitlines():
            muli = re.search(r"arith\.muli .*: (?:i32|tensor<[0-9x]*xi32>) loc\((#loc\d*)\)", line)
            if muli:
                multiplies.setdefault(where(muli.group(1)), []).append(flags)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def i32_multiplies():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", _FIND_I32_MULTIPLIES, *OPS], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _source_line(location: str) -> str:
    path, _, line = location.rpartition(":")
    return Path(path).read_text().splitlines()[int(line) - 1].strip()


@pytest.mark.parametrize("kernel", [
    "_grid_sample_3d_fwd_kernel", "_grid_sample_3d_bwd_kernel", "_warp_fwd_kernel",
    "_warp_bwd_kernel", "_adanorm_fwd_kernel", "_adanorm_bwd_kernel"])
def test_no_32_bit_multiply_in_index_math(i32_multiplies, kernel):
    assert kernel in i32_multiplies, f"{kernel} was not compiled: {sorted(i32_multiplies)}"
    offenders = {f"{loc}: {_source_line(loc)}": flags
                 for loc, flags in i32_multiplies[kernel].items()}
    assert not offenders, f"{kernel} multiplies in int32 (wraps past 2^31): {offenders}"
