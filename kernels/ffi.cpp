// C entry points that belong to no op: freeing error strings, what the build holds, and tensor
// facts that tch does not expose (the layout).

#include "ffi.h"

extern "C" {

void fwp_free_error(char* msg) { std::free(msg); }

// 1 when the CUDA kernels were compiled in.
int fwp_built_with_cuda() {
#ifdef FWP_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

// Denormal floats flushed to zero (FTZ and DAZ) on the calling thread, and on the threads it starts
// afterwards, which inherit its floating-point state (libtorch's OpenMP workers among them); PyTorch's
// torch.set_flush_denormal. Returns 1 when the CPU supports it, 0 when it does not (nothing changed).
int fwp_set_flush_denormal(int on) { return at::globalContext().setFlushDenormal(on != 0) ? 1 : 0; }

// The layout of *t as c10::Layout's value (0 = strided, 1 = sparse COO, 2 = sparse CSR, 3 = mkldnn,
// 4 = CSC, 5 = BSR, 6 = BSC, 7 = jagged).
char* fwp_tensor_layout(const at::Tensor* t, int* out) {
  return fwp::guarded([&] { *out = static_cast<int>(t->layout()); });
}

}  // extern "C"
