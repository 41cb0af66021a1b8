// sana_aoti_run: run a Sana transformer AOTInductor package from C++ (no Python at run time).
//
//   sana_aoti_run --package transformer.pt2 --inputs inputs.pt --output out.pt
//                 [--steps N --sampler flow-dpm-solver|flow-euler --guidance G --shift S]
//   sana_aoti_run --print-schedule --steps N [--sampler ... --shift S]
//
// inputs.pt is a dict of tensors written by Python's torch.save (read with torch::pickle_load):
//   forward mode (default): latent, timestep, encoder_hidden_states, encoder_attention_mask -> noise_pred
//   loop mode (--steps N):  latent (B,32,h,w) initial noise, encoder_hidden_states and encoder_attention_mask as
//                           SanaDeployPipeline.encode_prompt returns them (2B rows [negative; positive] when
//                           G > 1, B rows otherwise) -> denoised latents (not divided by the VAE scaling factor)
// The output is one tensor written with torch::pickle_save (read it with torch.load(path, weights_only=True)).
// --print-schedule prints "i sigma timestep" per step (9 significant digits: floats round-trip) and exits.
// Errors are reported on stderr with exit status 1 (2 for bad arguments).
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <torch/serialize.h>

#include "sana_aoti.h"

namespace {

struct UsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

constexpr const char* kUsage =
    "usage: sana_aoti_run --package PKG.pt2 --inputs IN.pt --output OUT.pt "
    "[--steps N --sampler flow-dpm-solver|flow-euler --guidance G --shift S]\n"
    "       sana_aoti_run --print-schedule --steps N [--sampler S --shift S]\n";

struct Args {
  std::string package, inputs, output;
  int steps = 0;  // 0: one forward call
  bool print_schedule = false;
  sana::SamplerParams sampler;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "--print-schedule") {
      a.print_schedule = true;
      continue;
    }
    if (i + 1 >= argc) throw UsageError("missing value for " + key);
    std::string value = argv[++i];
    try {
      if (key == "--package") a.package = value;
      else if (key == "--inputs") a.inputs = value;
      else if (key == "--output") a.output = value;
      else if (key == "--steps") a.steps = std::stoi(value);
      else if (key == "--sampler") a.sampler.sampler = sana::parse_sampler(value);
      else if (key == "--guidance") a.sampler.guidance_scale = std::stod(value);
      else if (key == "--shift") a.sampler.flow_shift = std::stod(value);
      else throw UsageError("unknown option " + key);
    } catch (const std::logic_error& e) {  // std::stoi/stod and parse_sampler
      if (dynamic_cast<const UsageError*>(&e)) throw;
      throw UsageError("bad value '" + value + "' for " + key + ": " + e.what());
    }
  }
  if (a.print_schedule) {
    if (a.steps < 1) throw UsageError("--print-schedule needs --steps N (N >= 1)");
  } else if (a.package.empty() || a.inputs.empty() || a.output.empty()) {
    throw UsageError("--package, --inputs and --output are required");
  }
  a.sampler.steps = a.steps;
  return a;
}

std::unordered_map<std::string, at::Tensor> read_tensor_dict(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  c10::IValue value = torch::pickle_load(bytes);
  if (!value.isGenericDict()) throw std::runtime_error(path + " must hold a dict of tensors (torch.save({name: t}))");
  std::unordered_map<std::string, at::Tensor> out;
  for (const auto& item : value.toGenericDict()) out[item.key().toStringRef()] = item.value().toTensor();
  return out;
}

const at::Tensor& need(const std::unordered_map<std::string, at::Tensor>& d, const std::string& name) {
  auto it = d.find(name);
  if (it == d.end()) throw std::runtime_error("the inputs file has no tensor named '" + name + "'");
  return it->second;
}

void write_tensor(const at::Tensor& t, const std::string& path) {
  std::vector<char> bytes = torch::pickle_save(t.cpu().contiguous());
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {  // never leave a half-written output behind
    throw std::runtime_error("cannot rename " + tmp + " to " + path);
  }
}

void print_schedule(const sana::SamplerParams& p) {
  auto solver = sana::make_solver(p.sampler, p.steps, p.flow_shift);
  const sana::Schedule& s = solver->schedule();
  for (size_t i = 0; i < s.sigmas.size(); ++i) {
    std::printf("%zu %.9g %.9g\n", i, s.sigmas[i], i < s.timesteps.size() ? s.timesteps[i] : 0.0f);
  }
}

int run(const Args& args) {
  if (args.print_schedule) {
    print_schedule(args.sampler);
    return 0;
  }
  auto inputs = read_tensor_dict(args.inputs);
  auto t0 = std::chrono::steady_clock::now();
  sana::Transformer transformer(args.package);
  auto t1 = std::chrono::steady_clock::now();

  at::Tensor out;
  if (args.steps == 0) {
    out = transformer.forward(need(inputs, "latent"), need(inputs, "timestep"), need(inputs, "encoder_hidden_states"),
                              need(inputs, "encoder_attention_mask"));
  } else {
    out = sana::denoise(transformer, need(inputs, "latent"), need(inputs, "encoder_hidden_states"),
                        need(inputs, "encoder_attention_mask"), args.sampler);
  }
  auto t2 = std::chrono::steady_clock::now();
  write_tensor(out, args.output);

  using ms = std::chrono::duration<double, std::milli>;
  std::cout << "loaded package in " << ms(t1 - t0).count() << " ms; ran ";
  if (args.steps) std::cout << args.steps << " " << sana::sampler_name(args.sampler.sampler) << " step(s)";
  else std::cout << "one forward call";
  std::cout << " in " << ms(t2 - t1).count() << " ms; output " << out.sizes() << " -> " << args.output << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
