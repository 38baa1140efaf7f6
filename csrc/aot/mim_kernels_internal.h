/* The interface between the generated launchers (mim_<op>_fwd.c) and the runtime
 * (mim_kernels_runtime.c) of the mim-engine AOT kernel library. Not installed, not public API.
 *
 * `python -m tools.aot` copies this file next to the sources it generates; the launchers need no
 * CUDA header (only the runtime includes cuda.h).
 */
#ifndef MIM_KERNELS_INTERNAL_H
#define MIM_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mim_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Cubin slots: sm_80 serves every compute capability 8.x; sm_90a only 9.0, sm_100a only 10.0,
 * sm_120a only 12.0 (arch-specific cubins). */
enum {
  MIM__TARGET_SM80 = 0,
  MIM__TARGET_SM90A = 1,
  MIM__TARGET_SM100A = 2,
  MIM__TARGET_SM120A = 3,
  MIM__TARGETS = 4
};

typedef struct mim__cubin {
  const unsigned char *data; /* NULL: not compiled for this target */
  size_t size;
  unsigned shared; /* dynamic shared memory a launch requests (Triton's metadata.shared) */
} mim__cubin;

typedef struct mim__variant {
  int dtype;                 /* mim_dtype */
  const int64_t *constexprs; /* values, in the order of mim__kernel.constexpr_names */
  int num_warps;
  mim__cubin cubin[MIM__TARGETS];
} mim__variant;

typedef struct mim__kernel {
  const char *op;     /* for messages: "grid_sample_3d" */
  const char *name;   /* the kernel's symbol in its cubins */
  int n_constexprs;
  const char *const *constexpr_names;
  int n_variants;
  const mim__variant *variants; /* registry order: dtype-major, then the op's launch configs */
} mim__kernel;

typedef struct mim__device {
  int major, minor; /* compute capability */
  int sm_count;
  int shared_optin; /* largest dynamic shared memory a block may request */
} mim__device;

/* Records a printf-style detail for mim_kernels_last_error() on this thread; returns status. */
mim_status mim__fail(mim_status status, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The device of the calling thread's current context (loads the driver on first use). */
mim_status mim__current_device(mim__device *device);

/* The index in kernel->variants of the variant of `dtype` whose constexprs equal `constexprs`,
 * or -1. */
int mim__find_variant(const mim__kernel *kernel, int dtype, const int64_t *constexprs);

/* Checks the grid, picks the cubin for the current device, loads it into the current context
 * once, and launches it on `stream` with `num_warps` * 32 threads a block. `params` holds a
 * pointer to each kernel argument (Triton's order, constexprs left out) and two more to the
 * (unused, zero) global and profile scratch pointers. */
mim_status mim__launch(const mim__kernel *kernel, int dtype, const int64_t *constexprs,
                       const int64_t grid[3], void **params, struct CUstream_st *stream);

const char *mim__dtype_name(int dtype);

/* "generated for ops ...; dtypes ...; targets ...": what this build holds, for messages. */
const char *mim__build_summary(void);

/* a * b for sizes >= 0; -1 when the product does not fit in int64_t. */
static inline int64_t mim__mul(int64_t a, int64_t b) {
  int64_t product;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &product)) return -1;
  return product;
}

static inline int64_t mim__cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#define MIM__REQUIRE_DTYPE(op, dtype)                                                          \
  do {                                                                                         \
    if ((dtype) != MIM_FLOAT32 && (dtype) != MIM_FLOAT16 && (dtype) != MIM_BFLOAT16)           \
      return mim__fail(MIM_ERROR_INVALID_ARGUMENT,                                             \
                       "%s: dtype must be MIM_FLOAT32, MIM_FLOAT16 or MIM_BFLOAT16, got %d",   \
                       (op), (int)(dtype));                                                    \
  } while (0)

#define MIM__REQUIRE_PADDING(op, padding)                                                      \
  do {                                                                                         \
    if ((padding) != MIM_PADDING_ZEROS && (padding) != MIM_PADDING_BORDER)                     \
      return mim__fail(MIM_ERROR_INVALID_ARGUMENT,                                             \
                       "%s: padding must be MIM_PADDING_ZEROS or MIM_PADDING_BORDER, got %d",  \
                       (op), (int)(padding));                                                  \
  } while (0)

#ifdef __cplusplus
}
#endif

#endif /* MIM_KERNELS_INTERNAL_H */
