// sana_aoti_run: run a Sana transformer AOTInductor package from C++ (no Python at run time).
//
//   sana_aoti_run --package transformer.pt2 --inputs inputs.pt --output out.pt [--steps N --guidance G --shift S]
//
// inputs.pt is a dict of tensors written by Python's torch.save (read with torch::pickle_load):
//   forward mode (default): latent, timestep, encoder_hidden_states, encoder_attention_mask -> noise_pred
//   loop mode (--steps N):  latent (the initial noise), encoder_hidden_states, encoder_attention_mask and, for CFG,
//                           negative_encoder_hidden_states, negative_encoder_attention_mask -> denoised latents
// The output is one tensor written with torch::pickle_save (read it with torch.load(path, weights_only=True)).
#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <unordered_map>

#include <torch/serialize.h>

#include "sana_aoti.h"

namespace {

struct Args {
  std::string package, inputs, output;
  int steps = 0;  // 0: one forward call
  sana::FlowEulerParams flow;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "error: " << why << "\n"
            << "usage: sana_aoti_run --package PKG.pt2 --inputs IN.pt --output OUT.pt "
               "[--steps N --guidance G --shift S]\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (i + 1 >= argc) usage("missing value for " + key);
    std::string value = argv[++i];
    if (key == "--package") a.package = value;
    else if (key == "--inputs") a.inputs = value;
    else if (key == "--output") a.output = value;
    else if (key == "--steps") a.steps = std::stoi(value);
    else if (key == "--guidance") a.flow.guidance_scale = std::stod(value);
    else if (key == "--shift") a.flow.flow_shift = std::stod(value);
    else usage("unknown option " + key);
  }
  if (a.package.empty() || a.inputs.empty() || a.output.empty()) usage("--package, --inputs and --output are required");
  return a;
}

std::unordered_map<std::string, at::Tensor> read_tensor_dict(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) usage("cannot read " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  c10::IValue value = torch::pickle_load(bytes);
  if (!value.isGenericDict()) usage(path + " must hold a dict of tensors (torch.save({name: tensor}))");
  std::unordered_map<std::string, at::Tensor> out;
  for (const auto& item : value.toGenericDict()) out[item.key().toStringRef()] = item.value().toTensor();
  return out;
}

const at::Tensor& need(const std::unordered_map<std::string, at::Tensor>& d, const std::string& name) {
  auto it = d.find(name);
  if (it == d.end()) usage("inputs file has no tensor named '" + name + "'");
  return it->second;
}

void write_tensor(const at::Tensor& t, const std::string& path) {
  std::vector<char> bytes = torch::pickle_save(t.cpu().contiguous());
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::rename(tmp.c_str(), path.c_str());  // never leave a half-written output behind
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  auto inputs = read_tensor_dict(args.inputs);
  auto t0 = std::chrono::steady_clock::now();
  sana::Transformer transformer(args.package);
  auto t1 = std::chrono::steady_clock::now();

  at::Tensor out;
  if (args.steps == 0) {
    out = transformer.forward(need(inputs, "latent"), need(inputs, "timestep"), need(inputs, "encoder_hidden_states"),
                              need(inputs, "encoder_attention_mask"));
  } else {
    args.flow.steps = args.steps;
    const bool cfg = args.flow.guidance_scale > 1.0;
    at::Tensor uncond = cfg ? need(inputs, "negative_encoder_hidden_states") : at::Tensor();
    at::Tensor uncond_mask = cfg ? need(inputs, "negative_encoder_attention_mask") : at::Tensor();
    out = sana::denoise(transformer, need(inputs, "latent"), need(inputs, "encoder_hidden_states"),
                        need(inputs, "encoder_attention_mask"), uncond, uncond_mask, args.flow);
  }
  auto t2 = std::chrono::steady_clock::now();
  write_tensor(out, args.output);

  using ms = std::chrono::duration<double, std::milli>;
  std::cout << "loaded package in " << ms(t1 - t0).count() << " ms; ran " << (args.steps ? args.steps : 1)
            << " step(s) in " << ms(t2 - t1).count() << " ms; output " << out.sizes() << " -> " << args.output
            << std::endl;
  return 0;
}
