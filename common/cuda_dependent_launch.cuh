// Programmatic dependent launch (sm_90; device code only, include from .cu files). A kernel
// launched with cudaLaunchAttributeProgrammaticStreamSerialization may start while the kernel
// before it in the stream still runs, once every block of that kernel has called
// LetDependentsLaunch (or ended); it must call AwaitPrerequisites before it reads anything the
// kernels before it wrote, or writes anything they read. What comes before the wait — a decode
// step's weight loads, which no kernel writes — overlaps the tail of the kernel before.
// Launched plainly, a kernel's wait returns at once and its trigger does nothing.
#pragma once

namespace rwr::cuda_dependent_launch {

__device__ __forceinline__ void LetDependentsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void AwaitPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace rwr::cuda_dependent_launch
