/* Test driver of the AOT kernel library: calls one launcher with fake device pointers and prints
 * what it returned. Run against csrc/testing/mock_libcuda.c (MIM_KERNELS_LIBCUDA=...), which
 * records the module loads and launches instead of executing them (tests/test_aot.py).
 *
 *   mim_kernels_probe version | strerror | init
 *   mim_kernels_probe [options] grid_sample_3d DTYPE N C D H W Do Ho Wo PADDING ALIGN
 *   mim_kernels_probe [options] region_softmax_warp DTYPE B FEATURE_BATCH C R D H W PADDING ALIGN
 *   mim_kernels_probe [options] deviation_adanorm DTYPE B T R G EPS
 *   mim_kernels_probe [options] selective_scan DTYPE BATCH DIM L N GROUPS SOFTPLUS
 *
 * DTYPE is fp32, fp16, bf16 or a number; PADDING zeros, border or a number. Options:
 * --null NAME (pass NULL for pointer NAME), --misalign NAME (add 4 bytes to it), --repeat K (call
 * K times), --release (then call mim_kernels_release_context). Prints "ptr NAME 0x..." for every
 * pointer, then per call "status CODE", "strerror TEXT" and "detail TEXT". Exit status 0, or 64
 * on a usage error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mim_kernels.h"

static const char *const k_pointer_names[] = {
    "input", "grid", "out", "feature", "logits", "displacement", "mask", "beta", "v", "scale",
    "shift", "mean", "rstd", "u", "delta", "z", "A", "B", "C", "D", "delta_bias",
    "initial_state", "checkpoints", "last_state"};
enum { N_POINTERS = sizeof k_pointer_names / sizeof k_pointer_names[0] };
static uintptr_t g_pointers[N_POINTERS];

static void *pointer(const char *name) {
  int i;
  for (i = 0; i < N_POINTERS; ++i)
    if (strcmp(k_pointer_names[i], name) == 0) return (void *)g_pointers[i];
  fprintf(stderr, "mim_kernels_probe: no pointer %s\n", name);
  exit(64);
}

static int set_pointer(const char *name, int null, int misalign) {
  int i;
  for (i = 0; i < N_POINTERS; ++i) {
    if (strcmp(k_pointer_names[i], name) != 0) continue;
    if (null) g_pointers[i] = 0;
    if (misalign) g_pointers[i] += 4;
    return 1;
  }
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: see the comment at the top of csrc/testing/mim_kernels_probe.c\n");
  return 64;
}

static int parse_dtype(const char *text) {
  if (strcmp(text, "fp32") == 0) return MIM_FLOAT32;
  if (strcmp(text, "fp16") == 0) return MIM_FLOAT16;
  if (strcmp(text, "bf16") == 0) return MIM_BFLOAT16;
  return atoi(text);
}

static int parse_padding(const char *text) {
  if (strcmp(text, "zeros") == 0) return MIM_PADDING_ZEROS;
  if (strcmp(text, "border") == 0) return MIM_PADDING_BORDER;
  return atoi(text);
}

static int64_t number(const char *text) { return (int64_t)strtoll(text, NULL, 0); }

static mim_status call(const char *op, char **a, int n) {
  struct CUstream_st *stream = (struct CUstream_st *)(uintptr_t)0x5eed0;
  if (strcmp(op, "grid_sample_3d") == 0 && n == 11)
    return mim_grid_sample_3d_fwd((mim_dtype)parse_dtype(a[0]), pointer("input"), pointer("grid"),
                                  pointer("out"), number(a[1]), number(a[2]), number(a[3]),
                                  number(a[4]), number(a[5]), number(a[6]), number(a[7]),
                                  number(a[8]), (mim_padding)parse_padding(a[9]),
                                  (int)number(a[10]), stream);
  if (strcmp(op, "region_softmax_warp") == 0 && n == 10)
    return mim_region_softmax_warp_fwd(
        (mim_dtype)parse_dtype(a[0]), pointer("feature"), pointer("logits"),
        pointer("displacement"), pointer("mask"), (const float *)pointer("beta"), pointer("out"),
        number(a[1]), number(a[2]), number(a[3]), number(a[4]), number(a[5]), number(a[6]),
        number(a[7]), (mim_padding)parse_padding(a[8]), (int)number(a[9]), stream);
  if (strcmp(op, "deviation_adanorm") == 0 && n == 6)
    return mim_deviation_adanorm_fwd((mim_dtype)parse_dtype(a[0]), pointer("v"), pointer("scale"),
                                     pointer("shift"), pointer("out"), (float *)pointer("mean"),
                                     (float *)pointer("rstd"), number(a[1]), number(a[2]),
                                     number(a[3]), number(a[4]), strtof(a[5], NULL), stream);
  if (strcmp(op, "selective_scan") == 0 && n == 7)
    return mim_selective_scan_fwd(
        (mim_dtype)parse_dtype(a[0]), pointer("u"), pointer("delta"), pointer("z"),
        (const float *)pointer("A"), pointer("B"), pointer("C"), (const float *)pointer("D"),
        (const float *)pointer("delta_bias"), (const float *)pointer("initial_state"),
        pointer("out"), (float *)pointer("checkpoints"), (float *)pointer("last_state"),
        number(a[1]), number(a[2]), number(a[3]), number(a[4]), number(a[5]), (int)number(a[6]),
        stream);
  exit(usage());
}

static void report(mim_status status) {
  printf("status %d\nstrerror %s\ndetail %s\n", (int)status, mim_kernels_strerror(status),
         status == MIM_SUCCESS ? "" : mim_kernels_last_error());
}

int main(int argc, char **argv) {
  int i, repeat = 1, release = 0;
  for (i = 0; i < N_POINTERS; ++i)
    g_pointers[i] = (uintptr_t)0x100000000000ULL + (uintptr_t)i * 0x1000000u;
  for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; ++i) {
    if (strcmp(argv[i], "--release") == 0) {
      release = 1;
    } else if (i + 1 < argc && strcmp(argv[i], "--repeat") == 0) {
      repeat = atoi(argv[++i]);
    } else if (i + 1 < argc &&
               (strcmp(argv[i], "--null") == 0 || strcmp(argv[i], "--misalign") == 0)) {
      int null = strcmp(argv[i], "--null") == 0;
      if (!set_pointer(argv[i + 1], null, !null)) return usage();
      ++i;
    } else {
      return usage();
    }
  }
  if (i >= argc) return usage();
  if (strcmp(argv[i], "version") == 0) {
    printf("%s\n", mim_kernels_version());
    return 0;
  }
  if (strcmp(argv[i], "strerror") == 0) {
    int code;
    for (code = 0; code <= 11; ++code)
      printf("%d %s\n", code, mim_kernels_strerror((mim_status)code));
    return 0;
  }
  if (strcmp(argv[i], "init") == 0) {
    report(mim_kernels_init());
    return 0;
  }
  {
    int p;
    for (p = 0; p < N_POINTERS; ++p)
      printf("ptr %s 0x%llx\n", k_pointer_names[p], (unsigned long long)g_pointers[p]);
  }
  for (; repeat > 0; --repeat) report(call(argv[i], argv + i + 1, argc - i - 1));
  if (release) {
    printf("release\n");
    report(mim_kernels_release_context());
  }
  return 0;
}
