/* mim_kernels_demo: grid_sample_3d's forward kernel through libmim_kernels, checked against a CPU
 * computation (trilinear sampling in double, PyTorch's grid_sample conventions).
 *
 * Runs the four (padding, align_corners) variants in fp32 on a small volume (N 2, C 3, 4x5x6
 * voxels, 3x4x5 sampling points, some of them outside the volume) on device 0.
 *
 * Exit status: 0 every value matches (|gpu - cpu| <= 1e-4); 1 a launch failed or a value
 * differs; 2 it cannot run here: no CUDA driver, no device, or a GPU this library has no cubin
 * for. The driver is found as the library finds it: libcuda.so.1, or $MIM_KERNELS_LIBCUDA.
 * `mim_kernels_demo --cpu-only` prints the inputs and the CPU reference instead (no driver).
 */
#include <cuda.h>
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mim_kernels.h"

enum { N = 2, C = 3, D = 4, H = 5, W = 6, DO = 3, HO = 4, WO = 5 };
enum {
  IN_SIZE = N * C * D * H * W,
  GRID_SIZE = N * DO * HO * WO * 3,
  OUT_SIZE = N * C * DO * HO * WO
};
#define TOLERANCE 1e-4

typedef struct demo_driver {
  CUresult (*device_get)(CUdevice *, int);
  CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
  CUresult (*primary_ctx_release)(CUdevice);
  CUresult (*ctx_set_current)(CUcontext);
  CUresult (*ctx_synchronize)(void);
  CUresult (*mem_alloc)(CUdeviceptr *, size_t);
  CUresult (*mem_free)(CUdeviceptr);
  CUresult (*memcpy_htod)(CUdeviceptr, const void *, size_t);
  CUresult (*memcpy_dtoh)(void *, CUdeviceptr, size_t);
} demo_driver;

static int load_driver(demo_driver *driver) {
  static const struct {
    const char *name;
    size_t offset;
  } symbols[] = {
      {"cuDeviceGet", offsetof(demo_driver, device_get)},
      {"cuDevicePrimaryCtxRetain", offsetof(demo_driver, primary_ctx_retain)},
      {"cuDevicePrimaryCtxRelease_v2", offsetof(demo_driver, primary_ctx_release)},
      {"cuCtxSetCurrent", offsetof(demo_driver, ctx_set_current)},
      {"cuCtxSynchronize", offsetof(demo_driver, ctx_synchronize)},
      {"cuMemAlloc_v2", offsetof(demo_driver, mem_alloc)},
      {"cuMemFree_v2", offsetof(demo_driver, mem_free)},
      {"cuMemcpyHtoD_v2", offsetof(demo_driver, memcpy_htod)},
      {"cuMemcpyDtoH_v2", offsetof(demo_driver, memcpy_dtoh)},
  };
  const char *path = getenv("MIM_KERNELS_LIBCUDA");
  void *handle = dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  size_t i;
  if (handle == NULL) return 0;
  for (i = 0; i < sizeof symbols / sizeof symbols[0]; ++i) {
    void *symbol = dlsym(handle, symbols[i].name);
    if (symbol == NULL) {
      fprintf(stderr, "mim_kernels_demo: the CUDA driver has no %s\n", symbols[i].name);
      return 0;
    }
    memcpy((char *)driver + symbols[i].offset, &symbol, sizeof symbol);
  }
  return 1;
}

/* ---- CPU reference: F.grid_sample(input, grid, "bilinear", padding, align_corners), 5-D ---- */

static double source_index(double coordinate, int size, int align_corners, int border) {
  double index = align_corners ? (coordinate + 1.0) / 2.0 * (size - 1)
                               : ((coordinate + 1.0) * size - 1.0) / 2.0;
  if (border) index = index < 0.0 ? 0.0 : (index > size - 1 ? size - 1 : index);
  return index;
}

static void reference(const float *input, const float *grid, double *out, int border,
                      int align_corners) {
  int n, c, p, corner;
  for (n = 0; n < N; ++n) {
    for (p = 0; p < DO * HO * WO; ++p) {
      const float *point = grid + (n * DO * HO * WO + p) * 3;
      double x = source_index(point[0], W, align_corners, border);
      double y = source_index(point[1], H, align_corners, border);
      double z = source_index(point[2], D, align_corners, border);
      double x0 = floor(x), y0 = floor(y), z0 = floor(z);
      for (c = 0; c < C; ++c) {
        const float *volume = input + (n * C + c) * D * H * W;
        double sum = 0.0;
        for (corner = 0; corner < 8; ++corner) {
          int xi = (int)x0 + (corner & 1), yi = (int)y0 + ((corner >> 1) & 1);
          int zi = (int)z0 + (corner >> 2);
          double weight = ((corner & 1) ? x - x0 : 1.0 - (x - x0)) *
                          (((corner >> 1) & 1) ? y - y0 : 1.0 - (y - y0)) *
                          ((corner >> 2) ? z - z0 : 1.0 - (z - z0));
          if (xi < 0 || xi >= W || yi < 0 || yi >= H || zi < 0 || zi >= D) continue;
          sum += weight * volume[(zi * H + yi) * W + xi];
        }
        out[(n * C + c) * DO * HO * WO + p] = sum;
      }
    }
  }
}

static void fill_inputs(float *input, float *grid) {
  unsigned long long state = 12345;
  int i;
  for (i = 0; i < IN_SIZE; ++i) input[i] = (float)sin(0.37 * i) + 0.25f * (float)(i % 7);
  for (i = 0; i < GRID_SIZE; ++i) { /* uniform in [-1.2, 1.2]: some points fall outside */
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    grid[i] = (float)(2.4 * (double)(state >> 11) / 9007199254740992.0 - 1.2);
  }
}

/* --cpu-only: print the inputs and the CPU reference of every variant, touching no driver (the
 * tests compare it with torch.nn.functional.grid_sample). */
static int print_reference(const float *input, const float *grid, double *expected) {
  int i, variant;
  printf("shape %d %d %d %d %d %d %d %d\ninput", N, C, D, H, W, DO, HO, WO);
  for (i = 0; i < IN_SIZE; ++i) printf(" %.9g", input[i]);
  printf("\ngrid");
  for (i = 0; i < GRID_SIZE; ++i) printf(" %.9g", grid[i]);
  printf("\n");
  for (variant = 0; variant < 4; ++variant) {
    reference(input, grid, expected, variant & 1, variant >> 1);
    printf("expected %s %d", (variant & 1) ? "border" : "zeros", variant >> 1);
    for (i = 0; i < OUT_SIZE; ++i) printf(" %.17g", expected[i]);
    printf("\n");
  }
  return 0;
}

static int cuda_ok(CUresult result, const char *call) {
  if (result == CUDA_SUCCESS) return 1;
  fprintf(stderr, "mim_kernels_demo: %s failed with CUresult %d\n", call, (int)result);
  return 0;
}

int main(int argc, char **argv) {
  static float input[IN_SIZE], grid[GRID_SIZE], out[OUT_SIZE];
  static double expected[OUT_SIZE];
  demo_driver driver;
  CUdevice device;
  CUcontext context;
  CUdeviceptr d_input = 0, d_grid = 0, d_out = 0;
  mim_status status;
  int i, variant, failed = 0;

  fill_inputs(input, grid);
  if (argc == 2 && strcmp(argv[1], "--cpu-only") == 0)
    return print_reference(input, grid, expected);
  if (argc != 1) {
    fprintf(stderr, "usage: mim_kernels_demo [--cpu-only]\n");
    return 1;
  }
  printf("mim_kernels_demo: %s\n", mim_kernels_version());
  status = mim_kernels_init();
  if (status != MIM_SUCCESS) {
    fprintf(stderr, "mim_kernels_demo: cannot run here: %s\n  %s\n", mim_kernels_strerror(status),
            mim_kernels_last_error());
    return status == MIM_ERROR_NO_DRIVER || status == MIM_ERROR_DRIVER_INIT ? 2 : 1;
  }
  if (!load_driver(&driver)) {
    fprintf(stderr, "mim_kernels_demo: cannot run here: no CUDA driver for the demo's own calls\n");
    return 2;
  }
  if (!cuda_ok(driver.device_get(&device, 0), "cuDeviceGet") ||
      !cuda_ok(driver.primary_ctx_retain(&context, device), "cuDevicePrimaryCtxRetain") ||
      !cuda_ok(driver.ctx_set_current(context), "cuCtxSetCurrent"))
    return 2;

  if (!cuda_ok(driver.mem_alloc(&d_input, sizeof input), "cuMemAlloc") ||
      !cuda_ok(driver.mem_alloc(&d_grid, sizeof grid), "cuMemAlloc") ||
      !cuda_ok(driver.mem_alloc(&d_out, sizeof out), "cuMemAlloc") ||
      !cuda_ok(driver.memcpy_htod(d_input, input, sizeof input), "cuMemcpyHtoD") ||
      !cuda_ok(driver.memcpy_htod(d_grid, grid, sizeof grid), "cuMemcpyHtoD"))
    return 1;

  for (variant = 0; variant < 4 && !failed; ++variant) {
    int border = variant & 1, align_corners = variant >> 1;
    double worst = 0.0;
    memset(out, 0, sizeof out);
    if (!cuda_ok(driver.memcpy_htod(d_out, out, sizeof out), "cuMemcpyHtoD")) return 1;
    status = mim_grid_sample_3d_fwd(MIM_FLOAT32, (const void *)(uintptr_t)d_input,
                                    (const void *)(uintptr_t)d_grid, (void *)(uintptr_t)d_out, N,
                                    C, D, H, W, DO, HO, WO,
                                    border ? MIM_PADDING_BORDER : MIM_PADDING_ZEROS, align_corners,
                                    NULL);
    if (status != MIM_SUCCESS) {
      fprintf(stderr, "mim_kernels_demo: mim_grid_sample_3d_fwd: %s\n  %s\n",
              mim_kernels_strerror(status), mim_kernels_last_error());
      return status == MIM_ERROR_UNSUPPORTED_DEVICE ? 2 : 1;
    }
    if (!cuda_ok(driver.ctx_synchronize(), "cuCtxSynchronize") ||
        !cuda_ok(driver.memcpy_dtoh(out, d_out, sizeof out), "cuMemcpyDtoH"))
      return 1;
    reference(input, grid, expected, border, align_corners);
    for (i = 0; i < OUT_SIZE; ++i) {
      double error = fabs((double)out[i] - expected[i]);
      if (!(error <= worst)) worst = error; /* NaN counts as the worst */
    }
    failed = !(worst <= TOLERANCE);
    printf("grid_sample_3d fp32 padding=%s align_corners=%d: out[0]=%.6f (cpu %.6f), "
           "max |gpu - cpu| = %.3g over %d values: %s\n",
           border ? "border" : "zeros", align_corners, out[0], expected[0], worst, OUT_SIZE,
           failed ? "MISMATCH" : "ok");
  }
  driver.mem_free(d_input);
  driver.mem_free(d_grid);
  driver.mem_free(d_out);
  mim_kernels_release_context();
  driver.primary_ctx_release(device);
  return failed ? 1 : 0;
}
