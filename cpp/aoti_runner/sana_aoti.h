// Embedding API for a Sana transformer compiled by `sana-deploy build --backend aoti` (AOTInductor .pt2).
//
// The package must have been compiled under `use_kernels("inline")` so it contains only aten kernels and runs
// from C++ with no Python-registered op. I/O follows the export spec (sana_deploy/export/specs.py):
//   latent (B,32,h,w) f32, timestep (B,) f32, encoder_hidden_states (B,L,C) f32, encoder_attention_mask (B,L) i64
//   -> noise_pred (B,32,h,w) f32
#pragma once

#include <string>

#include <ATen/Tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace sana {

// Flow-matching sampler settings (the defaults of Sana's Flow-Euler sampler).
struct FlowEulerParams {
  int steps = 20;
  double guidance_scale = 4.5;  // <= 1 disables classifier-free guidance (one transformer call per step)
  double flow_shift = 3.0;      // preset.flow_shift
};

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

// Shifted flow sigmas, steps + 1 values from 1 down to 0: sigma' = shift * s / (1 + (shift - 1) * s).
std::vector<double> flow_sigmas(int steps, double shift);

// The whole denoising loop (Flow-Euler, batched CFG): noise (B,32,h,w) -> latents (B,32,h,w), not yet divided by
// the VAE scaling factor. `cond`/`uncond` are the text encoder's hidden states (B,L,C) with their masks (B,L).
// With guidance_scale <= 1 the uncond tensors are ignored (pass undefined tensors).
at::Tensor denoise(Transformer& transformer, const at::Tensor& noise, const at::Tensor& cond,
                   const at::Tensor& cond_mask, const at::Tensor& uncond, const at::Tensor& uncond_mask,
                   const FlowEulerParams& params);

}  // namespace sana
