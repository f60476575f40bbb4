// The control op's CUDA registration (control_op.cpp says why it exists): the same check, then a
// copy by a kernel of its own, compiled by nvcc as nst_ext's CUDA kernels are.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace nst_ext_control {
namespace {

__global__ void copy_kernel(const float* source, float* destination, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    destination[i] = source[i];
}

at::Tensor checked_cuda(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "nst_ext_control: features must be 4-D (B, C, H, W), got ", features.dim(), "-D");
  const c10::cuda::OptionalCUDAGuard guard(features.device());
  const at::Tensor source = features.to(at::kFloat).contiguous();
  at::Tensor copy = at::empty_like(source);
  const int64_t count = source.numel();
  if (count > 0) {
    copy_kernel<<<static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 1024)), 256, 0,
                  c10::cuda::getCurrentCUDAStream()>>>(source.data_ptr<float>(), copy.data_ptr<float>(), count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return copy.to(features.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_ext_control, CUDA, m) { m.impl("checked", &checked_cuda); }

}  // namespace nst_ext_control
