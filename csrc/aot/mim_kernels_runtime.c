/* Runtime of the mim-engine AOT kernel library: the CUDA driver shim, module loading and launch.
 *
 * The driver is not linked: libcuda.so.1 (or the file named by $MIM_KERNELS_LIBCUDA) is opened
 * with dlopen on first use and the eleven entry points used here are resolved with dlsym, so the
 * library links against libc (and libdl, libpthread where they are separate) only, and a host
 * without a driver gets MIM_ERROR_NO_DRIVER instead of a loader error. cuda.h is needed at
 * compile time for the types.
 *
 * Modules are loaded lazily, once per (CUDA context, kernel variant), into the context current
 * on the calling thread, and kept until mim_kernels_release_context(). A lock guards the cache;
 * launches themselves run outside it.
 */
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mim_kernels_build.h"
#include "mim_kernels_internal.h"

/* ------------------------------------------------------------------------------------------- */
/* Errors                                                                                      */
/* ------------------------------------------------------------------------------------------- */

static _Thread_local char t_detail[512];

mim_status mim__fail(mim_status status, const char *format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(t_detail, sizeof t_detail, format, args);
  va_end(args);
  return status;
}

MIM_KERNELS_API const char *mim_kernels_last_error(void) { return t_detail; }

MIM_KERNELS_API const char *mim_kernels_strerror(mim_status status) {
  switch (status) {
    case MIM_SUCCESS:
      return "success";
    case MIM_ERROR_NO_DRIVER:
      return "no CUDA driver: libcuda.so.1 could not be loaded";
    case MIM_ERROR_DRIVER_INIT:
      return "the CUDA driver failed to initialize (cuInit): no usable device";
    case MIM_ERROR_NO_CONTEXT:
      return "no current CUDA context on the calling thread";
    case MIM_ERROR_UNSUPPORTED_DEVICE:
      return "the current device has no cubin in this library (sm_80 serves 8.x, sm_90a 9.0, "
             "sm_100a 10.0, sm_120a 12.0)";
    case MIM_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case MIM_ERROR_MISALIGNED:
      return "a tensor pointer is not 16-byte aligned";
    case MIM_ERROR_UNSUPPORTED:
      return "valid input outside what the compiled kernels cover";
    case MIM_ERROR_NOT_COMPILED:
      return "this kernel variant was not compiled into the library";
    case MIM_ERROR_CUDA:
      return "a CUDA driver call failed";
    case MIM_ERROR_OUT_OF_HOST_MEMORY:
      return "out of host memory";
  }
  return "unknown mim_status";
}

MIM_KERNELS_API const char *mim_kernels_version(void) { return MIM__BUILD_INFO; }

const char *mim__build_summary(void) {
  return "generated for ops " MIM__BUILD_OPS "; dtypes " MIM__BUILD_DTYPES "; targets "
      MIM__BUILD_TARGETS;
}

const char *mim__dtype_name(int dtype) {
  switch (dtype) {
    case MIM_FLOAT32:
      return "fp32";
    case MIM_FLOAT16:
      return "fp16";
    case MIM_BFLOAT16:
      return "bf16";
  }
  return "unknown dtype";
}

/* ------------------------------------------------------------------------------------------- */
/* The driver shim                                                                             */
/* ------------------------------------------------------------------------------------------- */

typedef struct driver {
  CUresult (*init)(unsigned int);
  CUresult (*get_error_name)(CUresult, const char **);
  CUresult (*get_error_string)(CUresult, const char **);
  CUresult (*ctx_get_current)(CUcontext *);
  CUresult (*ctx_get_device)(CUdevice *);
  CUresult (*device_get_attribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*module_load_data)(CUmodule *, const void *);
  CUresult (*module_get_function)(CUfunction *, CUmodule, const char *);
  CUresult (*module_unload)(CUmodule);
  CUresult (*func_set_attribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*launch_kernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                            unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
} driver;

/* Exported names, not cuda.h's macros: none of these has a versioned (_v2) or per-thread-stream
 * (_ptsz) name in use here; cuLaunchKernel is the legacy-default-stream entry point. */
static const struct {
  const char *name;
  size_t offset;
} k_symbols[] = {
    {"cuInit", offsetof(driver, init)},
    {"cuGetErrorName", offsetof(driver, get_error_name)},
    {"cuGetErrorString", offsetof(driver, get_error_string)},
    {"cuCtxGetCurrent", offsetof(driver, ctx_get_current)},
    {"cuCtxGetDevice", offsetof(driver, ctx_get_device)},
    {"cuDeviceGetAttribute", offsetof(driver, device_get_attribute)},
    {"cuModuleLoadData", offsetof(driver, module_load_data)},
    {"cuModuleGetFunction", offsetof(driver, module_get_function)},
    {"cuModuleUnload", offsetof(driver, module_unload)},
    {"cuFuncSetAttribute", offsetof(driver, func_set_attribute)},
    {"cuLaunchKernel", offsetof(driver, launch_kernel)},
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static mim_status g_init_status = MIM_ERROR_NO_DRIVER;
static char g_init_detail[512];
static driver g_driver;

static void cuda_error_text(CUresult result, char *text, size_t size) {
  const char *name = NULL, *description = NULL;
  if (g_driver.get_error_name) g_driver.get_error_name(result, &name);
  if (g_driver.get_error_string) g_driver.get_error_string(result, &description);
  snprintf(text, size, "%s (%d): %s", name ? name : "CUDA error", (int)result,
           description ? description : "no description");
}

static mim_status cuda_fail(const char *call, const char *what, CUresult result) {
  char text[256];
  cuda_error_text(result, text, sizeof text);
  return mim__fail(MIM_ERROR_CUDA, "%s%s%s failed: %s", call, what ? " " : "", what ? what : "",
                   text);
}

static void load_driver(void) {
  const char *path = getenv("MIM_KERNELS_LIBCUDA");
  void *handle;
  size_t i;
  CUresult result;
  if (path == NULL || path[0] == '\0') path = "libcuda.so.1";
  handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    const char *why = dlerror();
    snprintf(g_init_detail, sizeof g_init_detail,
             "no CUDA driver: cannot load %s (%s); install the NVIDIA driver, or point "
             "MIM_KERNELS_LIBCUDA at its libcuda.so.1",
             path, why ? why : "no reason given");
    g_init_status = MIM_ERROR_NO_DRIVER;
    return;
  }
  for (i = 0; i < sizeof k_symbols / sizeof k_symbols[0]; ++i) {
    void *symbol = dlsym(handle, k_symbols[i].name);
    if (symbol == NULL) {
      snprintf(g_init_detail, sizeof g_init_detail,
               "no CUDA driver: %s has no %s (a driver too old for this library?)", path,
               k_symbols[i].name);
      memset(&g_driver, 0, sizeof g_driver);
      g_init_status = MIM_ERROR_NO_DRIVER;
      return;
    }
    /* POSIX: object and function pointers share a representation. */
    memcpy((char *)&g_driver + k_symbols[i].offset, &symbol, sizeof symbol);
  }
  result = g_driver.init(0);
  if (result != CUDA_SUCCESS) {
    char text[256];
    cuda_error_text(result, text, sizeof text);
    snprintf(g_init_detail, sizeof g_init_detail, "cuInit(0) failed: %s", text);
    g_init_status = MIM_ERROR_DRIVER_INIT;
    return;
  }
  g_init_status = MIM_SUCCESS;
}

MIM_KERNELS_API mim_status mim_kernels_init(void) {
  pthread_once(&g_once, load_driver);
  if (g_init_status != MIM_SUCCESS) return mim__fail(g_init_status, "%s", g_init_detail);
  return MIM_SUCCESS;
}

/* ------------------------------------------------------------------------------------------- */
/* Contexts and their loaded modules                                                           */
/* ------------------------------------------------------------------------------------------- */

typedef struct loaded_function {
  const mim__variant *variant;
  CUmodule module;
  CUfunction function;
  struct loaded_function *next;
} loaded_function;

typedef struct context_entry {
  CUcontext context;
  mim__device device;
  int target; /* MIM__TARGET_*, or -1 when no cubin fits the device */
  loaded_function *functions;
  struct context_entry *next;
} context_entry;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static context_entry *g_contexts;

static mim_status current_context(CUcontext *context) {
  mim_status status = mim_kernels_init();
  CUresult result;
  if (status != MIM_SUCCESS) return status;
  *context = NULL;
  result = g_driver.ctx_get_current(context);
  if (result != CUDA_SUCCESS) return cuda_fail("cuCtxGetCurrent", NULL, result);
  if (*context == NULL)
    return mim__fail(MIM_ERROR_NO_CONTEXT,
                     "no current CUDA context on this thread: make one current first "
                     "(cuDevicePrimaryCtxRetain + cuCtxSetCurrent, or cudaSetDevice + cudaFree(0) "
                     "with the runtime API)");
  return MIM_SUCCESS;
}

static int target_of(const mim__device *device) {
  if (device->major == 8) return MIM__TARGET_SM80;
  if (device->major == 9 && device->minor == 0) return MIM__TARGET_SM90A;
  if (device->major == 10 && device->minor == 0) return MIM__TARGET_SM100A;
  if (device->major == 12 && device->minor == 0) return MIM__TARGET_SM120A;
  return -1;
}

/* The entry of `context` (the current one), created on first sight; g_lock held. */
static mim_status context_entry_locked(CUcontext context, context_entry **found) {
  static const struct {
    CUdevice_attribute attribute;
    size_t offset;
    const char *name;
  } attributes[] = {
      {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, offsetof(mim__device, major),
       "COMPUTE_CAPABILITY_MAJOR"},
      {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, offsetof(mim__device, minor),
       "COMPUTE_CAPABILITY_MINOR"},
      {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, offsetof(mim__device, sm_count),
       "MULTIPROCESSOR_COUNT"},
      {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, offsetof(mim__device, shared_optin),
       "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"},
  };
  context_entry *entry;
  CUdevice device;
  CUresult result;
  size_t i;
  for (entry = g_contexts; entry != NULL; entry = entry->next) {
    if (entry->context == context) {
      *found = entry;
      return MIM_SUCCESS;
    }
  }
  entry = (context_entry *)calloc(1, sizeof *entry);
  if (entry == NULL) return mim__fail(MIM_ERROR_OUT_OF_HOST_MEMORY, "out of host memory");
  result = g_driver.ctx_get_device(&device);
  if (result != CUDA_SUCCESS) {
    free(entry);
    return cuda_fail("cuCtxGetDevice", NULL, result);
  }
  for (i = 0; i < sizeof attributes / sizeof attributes[0]; ++i) {
    int value = 0;
    result = g_driver.device_get_attribute(&value, attributes[i].attribute, device);
    if (result != CUDA_SUCCESS) {
      free(entry);
      return cuda_fail("cuDeviceGetAttribute", attributes[i].name, result);
    }
    memcpy((char *)&entry->device + attributes[i].offset, &value, sizeof value);
  }
  entry->context = context;
  entry->target = target_of(&entry->device);
  entry->next = g_contexts;
  g_contexts = entry;
  *found = entry;
  return MIM_SUCCESS;
}

mim_status mim__current_device(mim__device *device) {
  CUcontext context;
  context_entry *entry;
  mim_status status = current_context(&context);
  if (status != MIM_SUCCESS) return status;
  pthread_mutex_lock(&g_lock);
  status = context_entry_locked(context, &entry);
  if (status == MIM_SUCCESS) *device = entry->device;
  pthread_mutex_unlock(&g_lock);
  return status;
}

MIM_KERNELS_API mim_status mim_kernels_release_context(void) {
  CUcontext context;
  context_entry **link;
  mim_status status = current_context(&context);
  if (status != MIM_SUCCESS) return status;
  pthread_mutex_lock(&g_lock);
  for (link = &g_contexts; *link != NULL; link = &(*link)->next) {
    context_entry *entry = *link;
    if (entry->context != context) continue;
    while (entry->functions != NULL) {
      loaded_function *loaded = entry->functions;
      CUresult result = g_driver.module_unload(loaded->module);
      entry->functions = loaded->next;
      free(loaded);
      if (result != CUDA_SUCCESS && status == MIM_SUCCESS)
        status = cuda_fail("cuModuleUnload", NULL, result);
    }
    *link = entry->next;
    free(entry);
    break;
  }
  pthread_mutex_unlock(&g_lock);
  return status;
}

/* ------------------------------------------------------------------------------------------- */
/* Variants and launch                                                                         */
/* ------------------------------------------------------------------------------------------- */

int mim__find_variant(const mim__kernel *kernel, int dtype, const int64_t *constexprs) {
  int i, j;
  for (i = 0; i < kernel->n_variants; ++i) {
    const mim__variant *variant = &kernel->variants[i];
    if (variant->dtype != dtype) continue;
    for (j = 0; j < kernel->n_constexprs; ++j)
      if (variant->constexprs[j] != constexprs[j]) break;
    if (j == kernel->n_constexprs) return i;
  }
  return -1;
}

static mim_status not_compiled(const mim__kernel *kernel, int dtype, const int64_t *constexprs) {
  char config[256];
  size_t used = 0;
  int j;
  config[0] = '\0';
  for (j = 0; j < kernel->n_constexprs && used < sizeof config; ++j) {
    int n = snprintf(config + used, sizeof config - used, "%s%s=%lld", j ? ", " : "",
                     kernel->constexpr_names[j], (long long)constexprs[j]);
    if (n < 0) break;
    used += (size_t)n;
  }
  return mim__fail(MIM_ERROR_NOT_COMPILED,
                   "%s: no %s variant for dtype %s with %s in this build (%s); regenerate with "
                   "python -m tools.aot",
                   kernel->op, kernel->name, mim__dtype_name(dtype), config, mim__build_summary());
}

static const char *target_name(int target) {
  static const char *const names[MIM__TARGETS] = {"sm_80", "sm_90a", "sm_100a", "sm_120a"};
  return names[target];
}

/* The function of `variant` in the current context `entry`, loading its module on first use;
 * g_lock held. */
static mim_status function_locked(const mim__kernel *kernel, const mim__variant *variant,
                                  context_entry *entry, CUfunction *function) {
  const mim__cubin *cubin = &variant->cubin[entry->target];
  loaded_function *loaded;
  CUmodule module = NULL;
  CUresult result;
  for (loaded = entry->functions; loaded != NULL; loaded = loaded->next) {
    if (loaded->variant == variant) {
      *function = loaded->function;
      return MIM_SUCCESS;
    }
  }
  loaded = (loaded_function *)calloc(1, sizeof *loaded);
  if (loaded == NULL) return mim__fail(MIM_ERROR_OUT_OF_HOST_MEMORY, "out of host memory");
  result = g_driver.module_load_data(&module, cubin->data);
  if (result != CUDA_SUCCESS) {
    free(loaded);
    return cuda_fail("cuModuleLoadData", kernel->name, result);
  }
  result = g_driver.module_get_function(&loaded->function, module, kernel->name);
  if (result == CUDA_SUCCESS && cubin->shared > 49152)
    result = g_driver.func_set_attribute(
        loaded->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)cubin->shared);
  if (result != CUDA_SUCCESS) {
    g_driver.module_unload(module);
    free(loaded);
    return cuda_fail("cuModuleGetFunction/cuFuncSetAttribute", kernel->name, result);
  }
  loaded->variant = variant;
  loaded->module = module;
  loaded->next = entry->functions;
  entry->functions = loaded;
  *function = loaded->function;
  return MIM_SUCCESS;
}

mim_status mim__launch(const mim__kernel *kernel, int dtype, const int64_t *constexprs,
                       const int64_t grid[3], void **params, struct CUstream_st *stream) {
  const mim__variant *variant;
  const mim__cubin *cubin;
  context_entry *entry;
  CUcontext context;
  CUfunction function = NULL;
  CUresult result;
  mim_status status;
  int index;
  if (grid[0] < 0 || grid[1] < 0 || grid[2] < 0)
    return mim__fail(MIM_ERROR_INVALID_ARGUMENT, "%s: negative launch grid", kernel->op);
  if (grid[0] > 2147483647LL || grid[1] > 65535 || grid[2] > 65535)
    return mim__fail(MIM_ERROR_UNSUPPORTED,
                     "%s: launch grid (%lld, %lld, %lld) exceeds CUDA's (2^31 - 1, 65535, 65535)",
                     kernel->op, (long long)grid[0], (long long)grid[1], (long long)grid[2]);
  if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return MIM_SUCCESS;
  index = mim__find_variant(kernel, dtype, constexprs);
  if (index < 0) return not_compiled(kernel, dtype, constexprs);
  variant = &kernel->variants[index];
  status = current_context(&context);
  if (status != MIM_SUCCESS) return status;

  pthread_mutex_lock(&g_lock);
  status = context_entry_locked(context, &entry);
  if (status == MIM_SUCCESS && entry->target < 0)
    status = mim__fail(MIM_ERROR_UNSUPPORTED_DEVICE,
                       "%s: the current device has compute capability %d.%d; this library holds "
                       "cubins for sm_80 (any 8.x), sm_90a (9.0), sm_100a (10.0) and sm_120a "
                       "(12.0)",
                       kernel->op, entry->device.major, entry->device.minor);
  cubin = status == MIM_SUCCESS ? &variant->cubin[entry->target] : NULL;
  if (status == MIM_SUCCESS && cubin->data == NULL)
    status = mim__fail(MIM_ERROR_NOT_COMPILED, "%s: %s (%s) was not compiled for %s (%s)",
                       kernel->op, kernel->name, mim__dtype_name(dtype),
                       target_name(entry->target), mim__build_summary());
  if (status == MIM_SUCCESS && (int64_t)cubin->shared > entry->device.shared_optin)
    status = mim__fail(MIM_ERROR_UNSUPPORTED_DEVICE,
                       "%s: %s needs %u bytes of shared memory; the device allows %d a block",
                       kernel->op, kernel->name, cubin->shared, entry->device.shared_optin);
  if (status == MIM_SUCCESS) status = function_locked(kernel, variant, entry, &function);
  pthread_mutex_unlock(&g_lock);
  if (status != MIM_SUCCESS) return status;

  result = g_driver.launch_kernel(function, (unsigned)grid[0], (unsigned)grid[1],
                                  (unsigned)grid[2], (unsigned)variant->num_warps * 32u, 1, 1,
                                  cubin->shared, (CUstream)stream, params, NULL);
  if (result != CUDA_SUCCESS) return cuda_fail("cuLaunchKernel", kernel->name, result);
  return MIM_SUCCESS;
}
