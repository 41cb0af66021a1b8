#include "sana_aoti.h"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

namespace sana {

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

std::vector<double> flow_sigmas(int steps, double shift) {
  if (steps < 1) throw std::invalid_argument("steps must be >= 1");
  std::vector<double> sigmas(steps + 1);
  for (int i = 0; i <= steps; ++i) {
    double s = 1.0 - static_cast<double>(i) / steps;
    sigmas[i] = shift * s / (1.0 + (shift - 1.0) * s);
  }
  return sigmas;
}

at::Tensor denoise(Transformer& transformer, const at::Tensor& noise, const at::Tensor& cond,
                   const at::Tensor& cond_mask, const at::Tensor& uncond, const at::Tensor& uncond_mask,
                   const FlowEulerParams& params) {
  const bool cfg = params.guidance_scale > 1.0;
  const int64_t batch = noise.size(0);
  // CFG batched as [uncond; cond], like diffusers: one transformer call per step.
  at::Tensor text = cfg ? at::cat({uncond, cond}) : cond;
  at::Tensor mask = cfg ? at::cat({uncond_mask, cond_mask}) : cond_mask;
  at::Tensor x = noise.to(at::kFloat).clone();
  const std::vector<double> sigmas = flow_sigmas(params.steps, params.flow_shift);
  for (int i = 0; i < params.steps; ++i) {
    // The transformer takes the integer-valued timestep floor(sigma * 1000) (export contract).
    const double t = std::floor(sigmas[i] * 1000.0);
    at::Tensor model_in = cfg ? at::cat({x, x}) : x;
    at::Tensor timestep = at::full({model_in.size(0)}, t, x.options());
    at::Tensor v = transformer.forward(model_in, timestep, text, mask).to(x.device());
    if (cfg) {
      at::Tensor v_uncond = v.narrow(0, 0, batch);
      at::Tensor v_cond = v.narrow(0, batch, batch);
      v = v_uncond + params.guidance_scale * (v_cond - v_uncond);
    }
    x = x + (sigmas[i + 1] - sigmas[i]) * v;
  }
  return x;
}

}  // namespace sana
