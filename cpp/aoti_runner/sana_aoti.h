// Embedding API for a Sana transformer compiled by `sana-deploy build --backend aoti` (AOTInductor .pt2).
//
// The package must have been compiled under `use_kernels("inline")` so it contains only aten kernels and runs
// from C++ with no Python-registered op. I/O follows the export spec (sana_deploy/export/specs.py):
//   latent (B,32,h,w) f32, timestep (B,) f32, encoder_hidden_states (B,L,C) f32, encoder_attention_mask (B,L) i64
//   -> noise_pred (B,32,h,w) f32
//
// The samplers are the Python runtime's (sana_deploy/runtime/solvers.py) line for line: the same sigmas (computed
// in double and rounded to float where Python rounds them), the same model timesteps and the same updates, so a
// C++ loop and `SanaDeployPipeline` over the same package agree to float rounding of the transformer itself.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace sana {

class Transformer {
 public:
  // `num_runners` > 1 lets that many threads call forward() at once (one AOTI container runner each).
  explicit Transformer(const std::string& package_path, size_t num_runners = 1);

  // One denoising step. Inputs are moved to the package's device; output is on that device, fp32.
  at::Tensor forward(const at::Tensor& latent, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states,
                     const at::Tensor& encoder_attention_mask);

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

enum class Sampler { kFlowDpmSolver, kFlowEuler };

// "flow-dpm-solver" (also "dpm", "flow-dpm") or "flow-euler" (also "euler"); `_` and `-` are interchangeable and
// case is ignored, as in Python's make_solver. Throws std::invalid_argument otherwise.
Sampler parse_sampler(const std::string& name);
const char* sampler_name(Sampler sampler);

// A sampler's schedule: `sigmas` has steps + 1 float entries ending in 0, `timesteps` the transformer's timestep
// input (float) for each of the `steps` steps.
struct Schedule {
  std::vector<float> sigmas;
  std::vector<float> timesteps;
};

// Flow-DPM-Solver++: s = 1 - linspace(1, 1/1000, steps + 1), shifted (sigma' = shift*s / (1 + (shift-1)*s)),
// reversed, the last entry dropped and 0 appended; timesteps are the integers trunc(sigma * 1000), computed from
// the double sigmas before they are rounded to float.
Schedule dpm_flow_schedule(int steps, double shift);

// Flow-Euler (diffusers' FlowMatchEulerDiscrete): linspace between the shifted training extremes (float) times
// 1000, divided by 1000 and shifted once more in double, rounded to float; timesteps are the fractional
// float(sigma) * 1000 in float.
Schedule euler_flow_schedule(int steps, double shift);

// Per-request solver state; make one per loop.
class FlowSolver {
 public:
  FlowSolver(Schedule schedule, int steps) : schedule_(std::move(schedule)), steps_(steps) {}
  virtual ~FlowSolver() = default;
  FlowSolver(const FlowSolver&) = delete;
  FlowSolver& operator=(const FlowSolver&) = delete;

  int steps() const { return steps_; }
  int index() const { return index_; }
  const Schedule& schedule() const { return schedule_; }
  // The transformer's timestep for the current step.
  float model_timestep() const { return schedule_.timesteps.at(static_cast<size_t>(index_)); }
  // Advance x one entry of the schedule with the (guided) model output v; both fp32.
  virtual at::Tensor step(const at::Tensor& v, const at::Tensor& x) = 0;

 protected:
  double sigma(int i) const { return static_cast<double>(schedule_.sigmas.at(static_cast<size_t>(i))); }
  void advance();

  Schedule schedule_;
  int steps_;
  int index_ = 0;
};

// DPM-Solver++ (data prediction), multistep order 2, midpoint; first order on the first and the last step.
class FlowDPMSolver : public FlowSolver {
 public:
  FlowDPMSolver(int steps, double shift) : FlowSolver(dpm_flow_schedule(steps, shift), steps) {}
  at::Tensor step(const at::Tensor& v, const at::Tensor& x) override;

 private:
  double lambda(int i) const;
  at::Tensor prev_x0_;
};

// Flow-matching Euler: x' = x + (sigma' - sigma) * v, the sigma difference taken in float.
class FlowEuler : public FlowSolver {
 public:
  FlowEuler(int steps, double shift) : FlowSolver(euler_flow_schedule(steps, shift), steps) {}
  at::Tensor step(const at::Tensor& v, const at::Tensor& x) override;
};

std::unique_ptr<FlowSolver> make_solver(Sampler sampler, int steps, double shift);

struct SamplerParams {
  Sampler sampler = Sampler::kFlowDpmSolver;  // the Python runtime's default
  int steps = 20;
  double guidance_scale = 4.5;  // <= 1 disables classifier-free guidance (one batch of B per transformer call)
  double flow_shift = 3.0;      // preset.flow_shift
};

// The whole denoising loop of SanaDeployPipeline: noise (B,32,h,w) -> latents (B,32,h,w), not yet divided by the
// VAE scaling factor. `text`/`mask` are the text encoder's hidden states (rows, L, C) and masks (rows, L) as
// `SanaDeployPipeline.encode_prompt` returns them: with guidance > 1, 2B rows stacked [negative; positive] and each
// step runs the transformer once on [x; x], v = v_uncond + g * (v_cond - v_uncond); without guidance, B rows.
at::Tensor denoise(Transformer& transformer, const at::Tensor& noise, const at::Tensor& text, const at::Tensor& mask,
                   const SamplerParams& params);

}  // namespace sana
