#include "sana_aoti.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <stdexcept>

#include <ATen/ATen.h>

namespace sana {
namespace {

constexpr int kNumTrainTimesteps = 1000;

// numpy.linspace(start, stop, num) in double, operation for operation: i * step + start with
// step = (stop - start) / (num - 1), the last entry set to stop exactly.
std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> y(static_cast<size_t>(num));
  if (num == 1) {
    y[0] = start;
    return y;
  }
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int i = 0; i < num; ++i) y[static_cast<size_t>(i)] = static_cast<double>(i) * step + start;
  y.back() = stop;
  return y;
}

// Sana's time shift sigma' = shift * s / (1 + (shift - 1) * s), in the precision of T (numpy's order of operations).
template <class T>
T shift_sigma(T s, T shift) {
  return shift * s / (T(1) + (shift - T(1)) * s);
}

void check_params(int steps, double shift) {
  if (steps < 1) throw std::invalid_argument("num_inference_steps must be a positive integer");
  if (!(shift > 0)) throw std::invalid_argument("flow_shift must be positive");
}

}  // namespace

Transformer::Transformer(const std::string& package_path, size_t num_runners)
    : loader_(package_path, "model", /*run_single_threaded=*/false, num_runners) {}

at::Tensor Transformer::forward(const at::Tensor& latent, const at::Tensor& timestep,
                                const at::Tensor& encoder_hidden_states, const at::Tensor& encoder_attention_mask) {
  if (latent.dim() != 4 || timestep.dim() != 1 || encoder_hidden_states.dim() != 3 ||
      encoder_attention_mask.dim() != 2) {
    throw std::invalid_argument("expected latent (B,32,h,w), timestep (B,), encoder_hidden_states (B,L,C), "
                                "encoder_attention_mask (B,L)");
  }
  std::vector<at::Tensor> inputs = {
      latent.to(at::kFloat).contiguous(),
      timestep.to(at::kFloat).contiguous(),
      encoder_hidden_states.to(at::kFloat).contiguous(),
      encoder_attention_mask.to(at::kLong).contiguous(),
  };
  std::vector<at::Tensor> outputs = loader_.run(inputs);
  if (outputs.size() != 1) {
    throw std::runtime_error("the package returned " + std::to_string(outputs.size()) +
                             " outputs; expected one (noise_pred). Was it built from the transformer spec?");
  }
  return outputs[0];
}

Sampler parse_sampler(const std::string& name) {
  std::string key = name;
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) {
    return c == '_' ? '-' : static_cast<char>(std::tolower(c));
  });
  if (key == "flow-dpm-solver" || key == "dpm" || key == "flow-dpm") return Sampler::kFlowDpmSolver;
  if (key == "flow-euler" || key == "euler") return Sampler::kFlowEuler;
  throw std::invalid_argument("unknown sampler '" + name + "'; choose one of flow-dpm-solver, flow-euler");
}

const char* sampler_name(Sampler sampler) {
  return sampler == Sampler::kFlowEuler ? "flow-euler" : "flow-dpm-solver";
}

Schedule dpm_flow_schedule(int steps, double shift) {
  check_params(steps, shift);
  const std::vector<double> lin = linspace(1.0, 1.0 / kNumTrainTimesteps, steps + 1);
  Schedule out;
  // flip(shift(1 - lin))[:-1]: entry k is the shifted value at lin[steps - k], for k < steps.
  for (int k = 0; k < steps; ++k) {
    const double sig = shift_sigma(1.0 - lin[static_cast<size_t>(steps - k)], shift);
    out.timesteps.push_back(static_cast<float>(static_cast<int64_t>(sig * kNumTrainTimesteps)));  // truncation
    out.sigmas.push_back(static_cast<float>(sig));
  }
  out.sigmas.push_back(0.0f);
  return out;
}

Schedule euler_flow_schedule(int steps, double shift) {
  check_params(steps, shift);
  // The training sigmas' extremes, in float like diffusers: s = 1000/1000 and 1/1000, shifted in float.
  const float shift_f = static_cast<float>(shift);
  const float sigma_max = shift_sigma(1.0f, shift_f);
  const float sigma_min = shift_sigma(1.0f / static_cast<float>(kNumTrainTimesteps), shift_f);
  const std::vector<double> t = linspace(static_cast<double>(sigma_max) * kNumTrainTimesteps,
                                         static_cast<double>(sigma_min) * kNumTrainTimesteps, steps);
  Schedule out;
  for (double ti : t) {
    const float sig = static_cast<float>(shift_sigma(ti / kNumTrainTimesteps, shift));
    out.sigmas.push_back(sig);
    out.timesteps.push_back(sig * static_cast<float>(kNumTrainTimesteps));
  }
  out.sigmas.push_back(0.0f);
  return out;
}

void FlowSolver::advance() { ++index_; }

double FlowDPMSolver::lambda(int i) const {
  const double s = sigma(i);
  return s == 0 ? std::numeric_limits<double>::infinity() : std::log(1 - s) - std::log(s);
}

at::Tensor FlowDPMSolver::step(const at::Tensor& v_in, const at::Tensor& x_in) {
  const int i = index_;
  if (i >= steps_) throw std::logic_error("the solver already took all its steps; make a new one per request");
  const at::Tensor v = v_in.to(at::kFloat);
  const at::Tensor x = x_in.to(at::kFloat);
  const double s_cur = sigma(i), s_next = sigma(i + 1);
  at::Tensor x0 = x - s_cur * v;
  const double h = lambda(i + 1) - lambda(i);
  const double ratio = s_next / s_cur;
  const double coeff = (1 - s_next) * std::expm1(-h);  // alpha' * (e^-h - 1); -alpha' at sigma' = 0
  const bool first_order = !prev_x0_.defined() || i == steps_ - 1;
  at::Tensor x_next;
  if (first_order) {
    x_next = ratio * x - coeff * x0;
  } else {
    const double h_prev = lambda(i) - lambda(i - 1);
    const at::Tensor d1 = (x0 - prev_x0_) * (h / h_prev);
    x_next = ratio * x - coeff * (x0 + 0.5 * d1);
  }
  prev_x0_ = x0;
  advance();
  return x_next;
}

at::Tensor FlowEuler::step(const at::Tensor& v, const at::Tensor& x) {
  const int i = index_;
  if (i >= steps_) throw std::logic_error("the solver already took all its steps; make a new one per request");
  const float dt = schedule_.sigmas[static_cast<size_t>(i + 1)] - schedule_.sigmas[static_cast<size_t>(i)];
  at::Tensor x_next = x.to(at::kFloat) + static_cast<double>(dt) * v.to(at::kFloat);
  advance();
  return x_next;
}

std::unique_ptr<FlowSolver> make_solver(Sampler sampler, int steps, double shift) {
  if (sampler == Sampler::kFlowEuler) return std::make_unique<FlowEuler>(steps, shift);
  return std::make_unique<FlowDPMSolver>(steps, shift);
}

at::Tensor denoise(Transformer& transformer, const at::Tensor& noise, const at::Tensor& text, const at::Tensor& mask,
                   const SamplerParams& params) {
  const bool cfg = params.guidance_scale > 1.0;
  if (noise.dim() != 4) throw std::invalid_argument("latent must be (B,32,h,w)");
  const int64_t batch = noise.size(0);
  const int64_t rows = cfg ? 2 * batch : batch;
  if (text.dim() != 3 || mask.dim() != 2 || text.size(0) != rows || mask.size(0) != rows) {
    throw std::invalid_argument(
        "encoder_hidden_states (rows,L,C) and encoder_attention_mask (rows,L) must have " + std::to_string(rows) +
        " rows for " + std::to_string(batch) + " latents" +
        (cfg ? " with guidance: [negative; positive], as SanaDeployPipeline.encode_prompt stacks them" : ""));
  }
  auto solver = make_solver(params.sampler, params.steps, params.flow_shift);
  at::Tensor x = noise.to(at::kFloat).clone();
  const at::Tensor emb = text.to(x.device(), at::kFloat);
  const at::Tensor emb_mask = mask.to(x.device(), at::kLong);
  for (int i = 0; i < solver->steps(); ++i) {
    // CFG batched as [uncond; cond]: one transformer call per step.
    at::Tensor model_in = cfg ? at::cat({x, x}) : x;
    at::Tensor timestep = at::full({model_in.size(0)}, solver->model_timestep(), x.options());
    at::Tensor v = transformer.forward(model_in, timestep, emb, emb_mask).to(x.device(), at::kFloat);
    if (cfg) {
      at::Tensor v_uncond = v.narrow(0, 0, batch);
      at::Tensor v_cond = v.narrow(0, batch, batch);
      v = v_uncond + params.guidance_scale * (v_cond - v_uncond);
    }
    x = solver->step(v, x);
  }
  return x;
}

}  // namespace sana
