// Python module entry for infogain_kernels._C. The ops themselves register with
// torch.library (namespace "infogain") from their own translation units, so
// importing this module is all Python needs to do to make them available.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "infogain-kernels C++/CUDA ops (registered under torch.ops.infogain)";
#ifdef INFOGAIN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
