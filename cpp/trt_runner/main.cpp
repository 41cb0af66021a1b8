// sana_trt_run: run one Sana TensorRT engine on raw host tensors.
// UNVERIFIED: compiles against the TensorRT 10/11 headers, but TensorRT and a GPU are not available where this
// project is tested, so it has never been linked or run.
//
//   sana_trt_run --engine transformer.plan [--plugins LIB.so] --out-dir out/
//       --input latent=latent.bin:1x32x32x32:f32 --input timestep=t.bin:1:f32
//       --input encoder_hidden_states=ehs.bin:1x300x2304:f32 --input encoder_attention_mask=m.bin:1x300:i64
//
// Each input is a raw little-endian row-major file (numpy: `array.tofile(path)`); each output is written to
// <out-dir>/<name>.bin and its shape printed. The optimisation profile is chosen from the input shapes.
// Errors are reported on stderr with exit status 1 (2 for bad arguments); device memory is freed on every path.
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "trt_engine.h"

namespace {

struct UsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

constexpr const char* kUsage =
    "usage: sana_trt_run --engine E.plan [--plugins LIB.so] --out-dir DIR "
    "--input NAME=FILE:DxDxD:f32|f16|bf16|i32|i64|bool ...\n";

nvinfer1::DataType parse_dtype(const std::string& s) {
  if (s == "f32") return nvinfer1::DataType::kFLOAT;
  if (s == "f16") return nvinfer1::DataType::kHALF;
  if (s == "i32") return nvinfer1::DataType::kINT32;
  if (s == "i64") return nvinfer1::DataType::kINT64;
  if (s == "bf16") return nvinfer1::DataType::kBF16;
  if (s == "bool") return nvinfer1::DataType::kBOOL;
  throw UsageError("unknown dtype " + s);
}

std::pair<std::string, sana::HostTensor> parse_input(const std::string& spec) {
  auto eq = spec.find('='), c1 = spec.find(':', eq), c2 = spec.rfind(':');
  if (eq == std::string::npos || c1 == std::string::npos || c1 == c2) throw UsageError("bad --input " + spec);
  sana::HostTensor t;
  std::stringstream dims(spec.substr(c1 + 1, c2 - c1 - 1));
  try {
    for (std::string d; std::getline(dims, d, 'x');) t.shape.push_back(std::stoll(d));
  } catch (const std::logic_error&) {
    throw UsageError("bad shape in --input " + spec);
  }
  t.dtype = parse_dtype(spec.substr(c2 + 1));
  std::ifstream f(spec.substr(eq + 1, c1 - eq - 1), std::ios::binary);
  if (!f) throw std::runtime_error("cannot read the file of --input " + spec);
  t.data.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return {spec.substr(0, eq), t};
}

int run(int argc, char** argv) {
  std::string engine_path, plugins, out_dir;
  std::map<std::string, sana::HostTensor> inputs;
  if (argc % 2 == 0) throw UsageError("options come in pairs: --name value");
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i], value = argv[i + 1];
    if (key == "--engine") engine_path = value;
    else if (key == "--plugins") plugins = value;
    else if (key == "--out-dir") out_dir = value;
    else if (key == "--input") inputs.insert(parse_input(value));
    else throw UsageError("unknown option " + key);
  }
  if (engine_path.empty() || out_dir.empty() || inputs.empty()) {
    throw UsageError("--engine, --out-dir and --input are required");
  }

  sana::TrtEngine engine(engine_path, plugins);
  for (const auto& [name, t] : engine.infer(inputs)) {
    const std::string path = out_dir + "/" + name + ".bin";
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
    std::cout << name << ":";
    for (size_t i = 0; i < t.shape.size(); ++i) std::cout << (i ? "x" : "") << t.shape[i];
    std::cout << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {  // TensorRT, CUDA and I/O errors: every resource is released by now
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
