// How fast the GPU's weights and AdamW moments reach fresh host memory — the pause of the training
// steps at every checkpoint (the rest of the checkpoint is written beside the steps). Compares
// ways to copy `--gib` GiB of device memory into a new std::vector<float>:
//   plain      vector(n) (zeroed by one thread: first touch of every page), then cudaMemcpy
//   populate   rwr::ZeroedFloats (the pages made resident by up to 8 threads first), then as plain
//   register   populate, then the vector pinned (cudaHostRegister) for the cudaMemcpy
//   staged     populate, then 64 MiB pieces through two pinned buffers, copied out by T threads
//   resident   the populate case's vector again: what host buffers kept between checkpoints cost
//   huge       MADV_HUGEPAGE, then populated by T threads (transparent huge pages)
// Run on the GPU machine: ./build/gpu/bench/host_copy_bench --gib 8 --threads 8
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/fresh_memory.h"

namespace {

using rwr::ZeroedFloats;

#define CHECK(x)                                                   \
  do {                                                             \
    cudaError_t e = (x);                                           \
    if (e != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); \
      std::exit(1);                                                \
    }                                                              \
  } while (0)

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
void Parallel(int threads, size_t n, F f) {  // f(begin, end) over [0, n) in `threads` slices
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([=] { f(n * t / threads, n * (t + 1) / threads); });
  }
  for (auto& th : pool) th.join();
}

// As ZeroedFloats, with the range marked for transparent huge pages first (MADV_HUGEPAGE): 2 MiB
// pages, 512 times fewer faults, where the kernel gives them.
std::vector<float> HugeZeroedFloats(size_t n, int threads) {
  std::vector<float> v;
  v.reserve(n);
  constexpr uintptr_t kHuge = 2 << 20, kPage = 4096;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(v.data()) + kHuge - 1) / kHuge * kHuge;
  const uintptr_t end = reinterpret_cast<uintptr_t>(v.data() + n) / kHuge * kHuge;
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    const size_t pages = (end - begin) / kPage;
    Parallel(threads, pages, [&](size_t a, size_t b) {
      madvise(reinterpret_cast<void*>(begin + a * kPage), (b - a) * kPage, 23);
    });  // 23: MADV_POPULATE_WRITE
  }
  v.resize(n);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 4;
  int threads = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--gib") gib = std::atof(argv[i + 1]);
    if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
  }
  const size_t n = static_cast<size_t>(gib * (1ull << 30) / 4);
  float* dev = nullptr;
  CHECK(cudaMalloc(&dev, n * 4));
  CHECK(cudaMemset(dev, 0x3f, n * 4));
  CHECK(cudaDeviceSynchronize());
  auto report = [&](const char* name, double t0, double t1, double t2) {
    std::printf("%-9s %6.2f s  (%5.1f GB/s; host memory ready %.2f s, copy %.2f s)\n", name,
                t2 - t0, n * 4 / (t2 - t0) / 1e9, t1 - t0, t2 - t1);
  };
  auto copy = [&](std::vector<float>& v) {
    CHECK(cudaMemcpy(v.data(), dev, n * 4, cudaMemcpyDeviceToHost));
  };
  // One way: host memory made by `make`, then filled by `fill`; both timed.
  auto time = [&](const char* name, auto make, auto fill) {
    const double t0 = Now();
    std::vector<float> v = make();
    const double t1 = Now();
    fill(v);
    report(name, t0, t1, Now());
    return v;
  };
  for (int round = 0; round < 2; ++round) {
    time(
        "plain", [&] { return std::vector<float>(n); }, copy);
    {
      std::vector<float> v = time(
          "populate", [&] { return ZeroedFloats(n); }, copy);
      const double t3 = Now();  // the same, resident memory again: what kept buffers would cost
      copy(v);
      report("resident", t3, t3, Now());
    }
    time(
        "huge", [&] { return HugeZeroedFloats(n, threads); }, copy);
    time(
        "register", [&] { return ZeroedFloats(n); },
        [&](std::vector<float>& v) {
          CHECK(cudaHostRegister(v.data(), n * 4, cudaHostRegisterDefault));
          copy(v);
          CHECK(cudaHostUnregister(v.data()));
        });
    time(
        "staged", [&] { return ZeroedFloats(n); },
        [&](std::vector<float>& v) {
          constexpr size_t kPiece = (64 << 20) / 4;
          float* pinned[2];
          cudaEvent_t done[2];
          cudaStream_t stream;
          CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
          for (int b = 0; b < 2; ++b) {
            CHECK(cudaMallocHost(&pinned[b], kPiece * 4));
            CHECK(cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming));
          }
          const size_t pieces = (n + kPiece - 1) / kPiece;
          auto issue = [&](size_t i) {
            const size_t off = i * kPiece, len = std::min(kPiece, n - off);
            CHECK(
                cudaMemcpyAsync(pinned[i % 2], dev + off, len * 4, cudaMemcpyDeviceToHost, stream));
            CHECK(cudaEventRecord(done[i % 2], stream));
          };
          issue(0);
          for (size_t i = 0; i < pieces; ++i) {
            CHECK(cudaEventSynchronize(done[i % 2]));
            if (i + 1 < pieces) issue(i + 1);
            const size_t off = i * kPiece, len = std::min(kPiece, n - off);
            const float* src = pinned[i % 2];
            Parallel(threads, len, [&](size_t a, size_t b) {
              std::memcpy(v.data() + off + a, src + a, (b - a) * 4);
            });
          }
          for (int b = 0; b < 2; ++b) {
            CHECK(cudaFreeHost(pinned[b]));
            CHECK(cudaEventDestroy(done[b]));
          }
          CHECK(cudaStreamDestroy(stream));
        });
  }
  CHECK(cudaFree(dev));
  return 0;
}
