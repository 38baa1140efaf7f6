/* A fake libcuda.so for tests of the AOT kernel library on machines without a GPU.
 *
 * It exports the eleven driver entry points mim_kernels_runtime.c resolves and, instead of
 * running anything, appends what it was asked to do to the file named by $MIM_MOCK_CUDA_LOG:
 *
 *   init flags=<flags>
 *   load bytes=<ELF image size> fnv1a64=<hash of those bytes>
 *   function name=<kernel>
 *   attribute <attribute>=<value>
 *   launch grid=<x>,<y>,<z> block=<x>,<y>,<z> shared=<bytes> stream=<pointer> params=<hex>,...
 *
 * The parameters are printed as little-endian integers of the byte sizes listed (comma
 * separated) in $MIM_MOCK_CUDA_PARAM_SIZES, since a launch does not say how large each is.
 * Behaviour: $MIM_MOCK_CUDA_CC is the compute capability as major*10 + minor (default 90),
 * $MIM_MOCK_CUDA_SMS the SM count (default 132), $MIM_MOCK_CUDA_INIT a CUresult for cuInit to
 * return (default 0), and $MIM_MOCK_CUDA_NO_CONTEXT, when set, makes cuCtxGetCurrent report no
 * current context. Not thread-safe; one launch per test process is the intended use.
 */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define MOCK_EXPORT __attribute__((visibility("default")))
#else
#define MOCK_EXPORT
#endif

static int env_int(const char *name, int fallback) {
  const char *text = getenv(name);
  return text != NULL && text[0] != '\0' ? atoi(text) : fallback;
}

static FILE *open_log(void) {
  const char *path = getenv("MIM_MOCK_CUDA_LOG");
  return path != NULL && path[0] != '\0' ? fopen(path, "a") : NULL;
}

static uint64_t read_le(const unsigned char *p, int bytes) {
  uint64_t value = 0;
  int i;
  for (i = bytes - 1; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

/* The extent of an ELF64 image in memory: the end of its furthest header table, section or
 * segment (cuModuleLoadData is given no size). */
static uint64_t elf_size(const unsigned char *image) {
  uint64_t phoff, shoff, end, i;
  unsigned phentsize, phnum, shentsize, shnum;
  if (memcmp(image, "\177ELF", 4) != 0 || image[4] != 2) return 0;
  phoff = read_le(image + 0x20, 8);
  shoff = read_le(image + 0x28, 8);
  phentsize = (unsigned)read_le(image + 0x36, 2);
  phnum = (unsigned)read_le(image + 0x38, 2);
  shentsize = (unsigned)read_le(image + 0x3A, 2);
  shnum = (unsigned)read_le(image + 0x3C, 2);
  end = shoff + (uint64_t)shentsize * shnum;
  if (phoff + (uint64_t)phentsize * phnum > end) end = phoff + (uint64_t)phentsize * phnum;
  for (i = 0; i < shnum; ++i) {
    const unsigned char *section = image + shoff + i * shentsize;
    uint64_t type = read_le(section + 4, 4);
    uint64_t stop = read_le(section + 0x18, 8) + read_le(section + 0x20, 8);
    if (type != 8 /* SHT_NOBITS */ && stop > end) end = stop;
  }
  for (i = 0; i < phnum; ++i) {
    const unsigned char *segment = image + phoff + i * phentsize;
    uint64_t stop = read_le(segment + 0x08, 8) + read_le(segment + 0x20, 8);
    if (stop > end) end = stop;
  }
  return end;
}

static int g_module_tag, g_function_tag, g_context_tag;
static char g_function_name[256];

MOCK_EXPORT CUresult cuInit(unsigned int flags) {
  FILE *log = open_log();
  if (log) {
    fprintf(log, "init flags=%u\n", flags);
    fclose(log);
  }
  return (CUresult)env_int("MIM_MOCK_CUDA_INIT", 0);
}

MOCK_EXPORT CUresult cuGetErrorName(CUresult error, const char **name) {
  *name = error == CUDA_ERROR_NO_DEVICE ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_MOCK";
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuGetErrorString(CUresult error, const char **description) {
  *description = error == CUDA_ERROR_NO_DEVICE ? "no CUDA-capable device is detected"
                                               : "an error of the mock driver";
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuCtxGetCurrent(CUcontext *context) {
  *context = getenv("MIM_MOCK_CUDA_NO_CONTEXT") ? NULL : (CUcontext)(void *)&g_context_tag;
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
  *device = 0;
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute,
                                          CUdevice device) {
  int capability = env_int("MIM_MOCK_CUDA_CC", 90);
  (void)device;
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
      *value = capability / 10;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
      *value = capability % 10;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
      *value = env_int("MIM_MOCK_CUDA_SMS", 132);
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN:
      *value = capability >= 90 ? 232448 : 166912;
      return CUDA_SUCCESS;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}

MOCK_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  const unsigned char *bytes = (const unsigned char *)image;
  uint64_t size = elf_size(bytes), hash = 14695981039346656037ULL, i;
  FILE *log = open_log();
  for (i = 0; i < size; ++i) hash = (hash ^ bytes[i]) * 1099511628211ULL;
  if (log) {
    fprintf(log, "load bytes=%llu fnv1a64=%016llx\n", (unsigned long long)size,
            (unsigned long long)hash);
    fclose(log);
  }
  if (size == 0) return CUDA_ERROR_INVALID_IMAGE;
  *module = (CUmodule)(void *)&g_module_tag;
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuModuleGetFunction(CUfunction *function, CUmodule module,
                                         const char *name) {
  FILE *log = open_log();
  (void)module;
  snprintf(g_function_name, sizeof g_function_name, "%s", name);
  if (log) {
    fprintf(log, "function name=%s\n", name);
    fclose(log);
  }
  *function = (CUfunction)(void *)&g_function_tag;
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuModuleUnload(CUmodule module) {
  FILE *log = open_log();
  (void)module;
  if (log) {
    fprintf(log, "unload\n");
    fclose(log);
  }
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute,
                                        int value) {
  FILE *log = open_log();
  (void)function;
  if (log) {
    fprintf(log, "attribute %d=%d\n", (int)attribute, value);
    fclose(log);
  }
  return CUDA_SUCCESS;
}

MOCK_EXPORT CUresult cuLaunchKernel(CUfunction function, unsigned int grid_x, unsigned int grid_y,
                                    unsigned int grid_z, unsigned int block_x,
                                    unsigned int block_y, unsigned int block_z,
                                    unsigned int shared, CUstream stream, void **params,
                                    void **extra) {
  const char *sizes = getenv("MIM_MOCK_CUDA_PARAM_SIZES");
  FILE *log = open_log();
  int index = 0;
  if (function != (CUfunction)(void *)&g_function_tag || extra != NULL)
    return CUDA_ERROR_INVALID_VALUE;
  if (log == NULL) return CUDA_SUCCESS;
  fprintf(log, "launch name=%s grid=%u,%u,%u block=%u,%u,%u shared=%u stream=%p params=",
          g_function_name, grid_x, grid_y, grid_z, block_x, block_y, block_z, shared,
          (void *)stream);
  while (sizes != NULL && *sizes != '\0') {
    int bytes = atoi(sizes);
    fprintf(log, "%s%llx", index ? "," : "",
            (unsigned long long)read_le((const unsigned char *)params[index], bytes));
    ++index;
    sizes = strchr(sizes, ',');
    if (sizes != NULL) ++sizes;
  }
  fprintf(log, "\n");
  fclose(log);
  return CUDA_SUCCESS;
}
