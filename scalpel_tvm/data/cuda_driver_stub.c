/* A build-time stand-in for the CUDA driver (libcuda.so.1), like the stub CUDA toolkits ship.
 *
 * TVM's CUDA runtime library links these driver entry points. On a build machine with no GPU
 * driver, scalpel_tvm/cuda.py loads this stub first so that the runtime library (and with it
 * TVM's CUDA codegen) loads; compiling makes no driver call, and any call made reports
 * CUDA_ERROR_NO_DEVICE. Never used where a real driver is installed. */
#define CUDA_ERROR_NO_DEVICE 100

int cuDeviceGetName(void) { return CUDA_ERROR_NO_DEVICE; }
int cuFuncSetAttribute(void) { return CUDA_ERROR_NO_DEVICE; }
int cuLaunchKernelEx(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleGetFunction(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleLoadData(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleUnload(void) { return CUDA_ERROR_NO_DEVICE; }
int cuTensorMapEncodeTiled(void) { return CUDA_ERROR_NO_DEVICE; }

int cuGetErrorName(int error, const char **name) {
  (void)error;
  if (name) *name = "CUDA_ERROR_NO_DEVICE";
  return 0;
}

int cuGetErrorString(int error, const char **text) {
  (void)error;
  if (text) *text = "no CUDA driver on this machine (scalpel-tvm build stub)";
  return 0;
}
