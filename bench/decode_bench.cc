// Decode-step latency of the CUDA Mamba LM for generation (trainer/mamba_cuda.h, the inference
// model `rwr generate` uses): random init, a short prompt per row, then timed decode steps of one
// token per row (each with its logits copied to the host, as generation needs them). Prints the
// median milliseconds per step for each row count next to the time to read the GEMM weights once
// at the card's memory bandwidth, the floor of a step that reads every weight once; `--trace`
// adds a CUPTI timeline of one step (bench/kernel_trace.h) with the GPU time of each kernel.
//
//   decode_bench --model configs/models/mamba-2.8b.yaml --rows 1,16 --steps 50 --trace
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <vector>

#include "CLI/CLI.hpp"
#ifdef RWR_HAVE_CUPTI
#include "bench/kernel_trace.h"
#endif
#include "fmt/format.h"
#include "trainer/mamba_cuda.h"
#include "trainer/model_config.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"
#include "trainer/train_loop.h"

namespace {

std::vector<int64_t> ParseList(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) values.push_back(std::stoll(item));
  }
  return values;
}

int Fail(const absl::Status& status) {
  fmt::print(stderr, "{}\n", std::string(status.message()));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Decode-step latency of the CUDA Mamba LM (generation)");
  std::string model_path = "configs/models/mamba-2.8b.yaml", rows_text = "1,16", precision = "bf16";
  int steps = 50, prompt = 32;
  bool trace = false, no_graphs = false;
  app.add_option("--model", model_path, "Model config YAML (model: section)");
  app.add_option("--rows", rows_text, "Row counts (sequences decoded together), e.g. 1,16");
  app.add_option("--steps", steps, "Timed decode steps per row count (after 5 warm-up steps)");
  app.add_option("--prompt", prompt, "Prompt tokens per row before the decode steps");
  app.add_option("--precision", precision, "bf16 (the default for generation) or fp32");
  app.add_flag("--no-graphs", no_graphs, "Launch each kernel instead of replaying a CUDA graph");
  app.add_flag("--trace", trace,
               "Record one more decode step with CUPTI and print each kernel's GPU time");
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

  rwr::trainer::Rng rng(7);
  for (const int64_t rows : ParseList(rows_text)) {
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
  return 0;
}
