// sana_trt_run: run one Sana TensorRT engine on raw host tensors (UNVERIFIED here: no TensorRT in CI).
//
//   sana_trt_run --engine transformer.plan [--plugins libsana_plugins.so] --out-dir out/ \
//       --input latent=latent.bin:1x32x32x32:f32 --input timestep=t.bin:1:f32 \
//       --input encoder_hidden_states=ehs.bin:1x300x2304:f32 --input encoder_attention_mask=m.bin:1x300:i64
//
// Each input is a raw little-endian row-major file (numpy: `array.tofile(path)`); each output is written to
// <out-dir>/<name>.bin and its shape printed. The optimisation profile is chosen from the input shapes.
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "trt_engine.h"

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "error: " << why << "\nusage: sana_trt_run --engine E.plan [--plugins LIB.so] --out-dir DIR "
            << "--input NAME=FILE:DxDxD:f32|f16|i32|i64 ...\n";
  std::exit(2);
}

nvinfer1::DataType parse_dtype(const std::string& s) {
  if (s == "f32") return nvinfer1::DataType::kFLOAT;
  if (s == "f16") return nvinfer1::DataType::kHALF;
  if (s == "i32") return nvinfer1::DataType::kINT32;
  if (s == "i64") return nvinfer1::DataType::kINT64;
  usage("unknown dtype " + s);
}

std::pair<std::string, sana::HostTensor> parse_input(const std::string& spec) {
  auto eq = spec.find('='), c1 = spec.find(':', eq), c2 = spec.rfind(':');
  if (eq == std::string::npos || c1 == std::string::npos || c1 == c2) usage("bad --input " + spec);
  sana::HostTensor t;
  std::stringstream dims(spec.substr(c1 + 1, c2 - c1 - 1));
  for (std::string d; std::getline(dims, d, 'x');) t.shape.push_back(std::stoll(d));
  t.dtype = parse_dtype(spec.substr(c2 + 1));
  std::ifstream f(spec.substr(eq + 1, c1 - eq - 1), std::ios::binary);
  if (!f) usage("cannot read the file of " + spec);
  t.data.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return {spec.substr(0, eq), t};
}

}  // namespace

int main(int argc, char** argv) {
  std::string engine_path, plugins, out_dir;
  std::map<std::string, sana::HostTensor> inputs;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i], value = argv[i + 1];
    if (key == "--engine") engine_path = value;
    else if (key == "--plugins") plugins = value;
    else if (key == "--out-dir") out_dir = value;
    else if (key == "--input") inputs.insert(parse_input(value));
    else usage("unknown option " + key);
  }
  if (engine_path.empty() || out_dir.empty() || inputs.empty()) usage("--engine, --out-dir and --input are required");

  sana::TrtEngine engine(engine_path, plugins);
  for (const auto& [name, t] : engine.infer(inputs)) {
    std::ofstream(out_dir + "/" + name + ".bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    std::cout << name << ":";
    for (size_t i = 0; i < t.shape.size(); ++i) std::cout << (i ? "x" : "") << t.shape[i];
    std::cout << std::endl;
  }
  return 0;
}
