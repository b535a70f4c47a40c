// Element conversions for CUDA kernels that store fp32 or bf16 and compute in fp32: one
// definition for every kernel file (device code only; include from .cu files).
#pragma once

#include <cuda_bf16.h>

namespace rwr::cuda_elements {

template <typename E>
__device__ __forceinline__ float ToFloat(E v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Round to nearest even for bf16.
template <typename E>
__device__ __forceinline__ E FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace rwr::cuda_elements
