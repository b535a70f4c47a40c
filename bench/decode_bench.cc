// Decode-step latency of the CUDA Mamba LM for generation (trainer/mamba_cuda.h, the inference
// model `rwr generate` uses): random init, a short prompt per row, then timed decode steps of one
// token per row (each with its logits copied to the host, as generation needs them). Prints the
// median milliseconds per step for each row count next to the time to read the GEMM weights once
// at the card's memory bandwidth, the floor of a step that reads every weight once; `--trace`
// adds a CUPTI timeline of one step (bench/kernel_trace.h) with the GPU time of each kernel.
//
//   decode_bench --model configs/models/mamba-2.8b.yaml --rows 1,16 --steps 50 --trace \
//                --json decode.json
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#ifdef RWR_HAVE_CUPTI
#include "bench/kernel_trace.h"
#endif
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "trainer/few_rows_linear.h"
#include "trainer/mamba_cuda.h"
#include "trainer/model_config.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"
#include "trainer/train_loop.h"

namespace {

int Fail(const absl::Status& status) {
  fmt::print(stderr, "{}\n", std::string(status.message()));
  return 1;
}

// The decode step's few-rows linears alone (trainer/few_rows_linear.h), one shape at a time:
// microseconds a call and the weights' GB/s, each call on the next of 8 copies of the weights so
// that none is still in the L2 from the call before (a decode step reads each weight once).
absl::Status TimeLinears(const rwr::trainer::MambaConfig& mc, const std::vector<int64_t>& rows,
                         double bandwidth) {
  struct Shape {
    const char* name;
    int64_t n, k, ldx;
    bool y_f32;
    float beta;
  };
  const int64_t D = mc.d_model, Di = mc.d_inner, X = mc.xdbl_dim();
  const Shape shapes[] = {{"in_proj", 2 * Di, D, D, false, 0.f},
                          {"x_proj", X, Di, Di, false, 0.f},
                          {"dt_proj", Di, mc.dt_rank, X, false, 0.f},
                          {"out_proj", D, Di, Di, true, 1.f},
                          {"lm_head", mc.vocab_size, D, D, true, 0.f}};
  constexpr int kCopies = 8, kCalls = 400;
  // Freed on every way out, the early returns of a failed call included.
  using DeviceBytes = std::unique_ptr<void, decltype([](void* p) { cudaFree(p); })>;
  auto allocate = [](int64_t bytes) {
    void* p = nullptr;
    return DeviceBytes(cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr);
  };
  for (const Shape& s : shapes) {
    const int64_t w_bytes = s.n * s.k * 2;
    const DeviceBytes w_owned = allocate(w_bytes * kCopies);
    const DeviceBytes x_owned = allocate(rwr::trainer::cuda::kFewRowsMax * s.ldx * 2);
    const DeviceBytes y_owned = allocate(rwr::trainer::cuda::kFewRowsMax * s.n * 4);
    void *w = w_owned.get(), *x = x_owned.get(), *y = y_owned.get();
    if (w == nullptr || x == nullptr || y == nullptr) {
      return absl::ResourceExhaustedError("no device memory for the linears' weights");
    }
    cudaMemset(w, 0x3c, w_bytes * kCopies);  // 0x3c3c: bf16 ≈ 0.0115, never zero
    cudaMemset(x, 0x3c, rwr::trainer::cuda::kFewRowsMax * s.ldx * 2);
    cudaMemset(y, 0, rwr::trainer::cuda::kFewRowsMax * s.n * 4);
    std::string line = fmt::format("  {:<9} {:>6} x {:<5}", s.name, s.n, s.k);
    for (const int64_t r : rows) {
      if (r > rwr::trainer::cuda::kFewRowsMax) continue;
      rwr::trainer::cuda::FewRowsLinear p{.x = x,
                                          .ldx = s.ldx,
                                          .w = w,
                                          .y = y,
                                          .ldy = s.n,
                                          .y_f32 = s.y_f32,
                                          .beta = s.beta,
                                          .rows = r,
                                          .n = s.n,
                                          .k = s.k};
      cudaEvent_t start, stop;
      cudaEventCreate(&start);
      cudaEventCreate(&stop);
      absl::Status ran;
      for (int i = 0; i < kCalls + kCopies && ran.ok(); ++i) {
        if (i == kCopies) cudaEventRecord(start);
        p.w = static_cast<char*>(w) + (i % kCopies) * w_bytes;
        ran = rwr::trainer::cuda::RunFewRowsLinear(p, nullptr);
      }
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      if (!ran.ok()) {
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        return ran;
      }
      const double us = ms * 1e3 / kCalls;
      line += fmt::format("  rows {}: {:7.2f} us {:6.0f} GB/s ({:.0f}%)", r, us, w_bytes / us / 1e3,
                          100 * w_bytes / us / 1e3 / (bandwidth / 1e9));
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
    fmt::print("{}\n", line);
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Decode-step latency of the CUDA Mamba LM (generation)");
  std::string model_path = "configs/models/mamba-2.8b.yaml", precision = "bf16", json_path;
  std::vector<int64_t> row_counts = {1, 16};
  int steps = 50, prompt = 32;
  bool trace = false, no_graphs = false, linears = false;
  app.add_option("--model", model_path, "Model config YAML (model: section)");
  app.add_option("--rows", row_counts, "Row counts (sequences decoded together), e.g. 1,16")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Timed decode steps per row count (after 5 warm-up steps)")
      ->check(CLI::PositiveNumber);
  app.add_option("--prompt", prompt, "Prompt tokens per row before the decode steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--precision", precision, "bf16 (the default for generation) or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  app.add_option("--json", json_path, "Also write the results (per row count) as JSON");
  app.add_flag("--no-graphs", no_graphs, "Launch each kernel instead of replaying a CUDA graph");
  app.add_flag("--trace", trace,
               "Record one more decode step with CUPTI and print each kernel's GPU time");
  app.add_flag("--linears", linears,
               "Also time each few-rows linear of a decode step alone (back to back, rows up to "
               "4), against the memory bandwidth");
  CLI11_PARSE(app, argc, argv);

  auto config = rwr::Config::LoadFile(model_path);
  if (!config.ok()) return Fail(config.status());
  auto mc = rwr::trainer::ModelConfigFromRunConfig(*config);
  if (!mc.ok()) return Fail(mc.status());
  const bool bf16 = precision != "fp32";
  auto model = rwr::trainer::MambaCuda::CreateForInference(
      *mc, bf16 ? rwr::trainer::GemmPrecision::kBf16 : rwr::trainer::GemmPrecision::kFp32);
  if (!model.ok()) return Fail(model.status());
  if (auto s = (*model)->UploadParams(rwr::trainer::InitParams(*mc, 1)); !s.ok()) return Fail(s);
  (*model)->SetDecodeGraphs(!no_graphs);

  cudaDeviceProp prop{};
  int device = 0;
  cudaGetDevice(&device);
  cudaGetDeviceProperties(&prop, device);
  // Every GEMM weight read once a step: the embedding (the LM head) and each layer's four
  // projections. The memory bus: clock (kHz) × width (bits) × 2 (double data rate) / 8.
  int clock_khz = 0, bus_bits = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  const double bandwidth = 2.0 * clock_khz * 1e3 * bus_bits / 8;
  const int64_t D = mc->d_model;
  const int64_t Di = mc->d_inner;
  const int64_t gemm_params = mc->vocab_size * D + mc->n_layer * (D * 2 * Di + Di * mc->xdbl_dim() +
                                                                  mc->dt_rank * Di + Di * D);
  const double floor_ms = gemm_params * (bf16 ? 2.0 : 4.0) / bandwidth * 1e3;
  fmt::print("{} on {} ({:.0f} GB/s): {:.2f} GB of GEMM weights, read once in {:.3f} ms\n",
             mc->Summary(), prop.name, bandwidth / 1e9, gemm_params * (bf16 ? 2.0 : 4.0) / 1e9,
             floor_ms);

  if (linears) {
    fmt::print("few-rows linears alone, back to back:\n");
    if (auto s = TimeLinears(*mc, row_counts, bandwidth); !s.ok()) return Fail(s);
  }
  nlohmann::json results = {{"card", prop.name},
                            {"model", mc->Summary()},
                            {"precision", precision},
                            {"graphs", !no_graphs},
                            {"weight_read_floor_ms", floor_ms},
                            {"rows", nlohmann::json::array()}};
  rwr::trainer::Rng rng(7);
  for (const int64_t rows : row_counts) {
    std::vector<float> logits(rows * mc->vocab_size);
    auto advance = [&](int64_t tokens_per_row) {
      std::vector<int32_t> tokens(rows * tokens_per_row);
      for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % mc->vocab_size);
      return (*model)->Advance({.tokens = tokens, .rows = rows}, 0, logits);
    };
    if (auto s = (*model)->ResetSequence(rows); !s.ok()) return Fail(s);
    if (auto s = advance(prompt); !s.ok()) return Fail(s);
    for (int i = 0; i < 5; ++i) {
      if (auto s = advance(1); !s.ok()) return Fail(s);
    }
    std::vector<double> ms;
    for (int i = 0; i < steps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      if (auto s = advance(1); !s.ok()) return Fail(s);
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    fmt::print(
        "rows {:3}: {:.3f} ms a decode step (median of {}; min {:.3f}, max {:.3f}), "
        "{:.1f}x the weight-read floor, {:.0f} tokens/s\n",
        rows, ms[ms.size() / 2], ms.size(), ms.front(), ms.back(), ms[ms.size() / 2] / floor_ms,
        rows * 1e3 / ms[ms.size() / 2]);
    results["rows"].push_back({{"rows", rows},
                               {"median_ms", ms[ms.size() / 2]},
                               {"min_ms", ms.front()},
                               {"max_ms", ms.back()},
                               {"steps", ms.size()},
                               {"tokens_per_s", rows * 1e3 / ms[ms.size() / 2]}});
    if (trace) {
      std::string error = "built without CUPTI";
#ifdef RWR_HAVE_CUPTI
      if (rwr::bench::StartKernelTrace(&error)) error.clear();
#endif
      if (!error.empty()) {
        fmt::print("  no trace: {}\n", error);
        continue;
      }
      if (auto s = advance(1); !s.ok()) return Fail(s);
#ifdef RWR_HAVE_CUPTI
      rwr::bench::PrintTraceSummary(rwr::bench::StopKernelTrace(), 12);
#endif
    }
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << results.dump(2) << "\n";
    if (!out) return Fail(absl::UnavailableError("cannot write " + json_path));
  }
  return 0;
}
