#include "trt_engine.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>

namespace sana {
namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << std::endl;
  }
};
Logger g_logger;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kUINT8:
    case nvinfer1::DataType::kBOOL: return 1;
    default: throw std::runtime_error("unsupported TensorRT data type at the engine boundary");
  }
}

nvinfer1::Dims to_dims(const std::vector<int64_t>& shape) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) d.d[i] = shape[i];
  return d;
}

std::vector<int64_t> from_dims(const nvinfer1::Dims& d) { return std::vector<int64_t>(d.d, d.d + d.nbDims); }

}  // namespace

size_t HostTensor::numel() const {
  size_t n = 1;
  for (int64_t s : shape) n *= static_cast<size_t>(s);
  return n;
}

TrtEngine::TrtEngine(const std::string& plan_path, const std::string& plugin_library) {
  runtime_.reset(nvinfer1::createInferRuntime(g_logger));
  if (!runtime_) throw std::runtime_error("createInferRuntime failed (is a CUDA GPU visible?)");
  if (!plugin_library.empty() && !runtime_->getPluginRegistry().loadLibrary(plugin_library.c_str())) {
    throw std::runtime_error("could not load the plugin library " + plugin_library);
  }
  std::ifstream f(plan_path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + plan_path);
  std::vector<char> plan((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
  if (!engine_) {
    throw std::runtime_error("could not deserialize " + plan_path +
                             " (built by another TensorRT version or for another GPU? rebuild it on this machine)");
  }
  context_.reset(engine_->createExecutionContext());
  check(cudaStreamCreate(&stream_), "cudaStreamCreate");
}

TrtEngine::~TrtEngine() {
  context_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

std::vector<std::string> TrtEngine::input_names() const {
  std::vector<std::string> names;
  for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
    const char* n = engine_->getIOTensorName(i);
    if (engine_->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT) names.emplace_back(n);
  }
  return names;
}

std::vector<std::string> TrtEngine::output_names() const {
  std::vector<std::string> names;
  for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
    const char* n = engine_->getIOTensorName(i);
    if (engine_->getTensorIOMode(n) == nvinfer1::TensorIOMode::kOUTPUT) names.emplace_back(n);
  }
  return names;
}

int TrtEngine::find_profile(const std::map<std::string, std::vector<int64_t>>& shapes) const {
  for (int p = 0; p < engine_->getNbOptimizationProfiles(); ++p) {
    bool covers = true;
    for (const auto& [name, shape] : shapes) {
      auto lo = from_dims(engine_->getProfileShape(name.c_str(), p, nvinfer1::OptProfileSelector::kMIN));
      auto hi = from_dims(engine_->getProfileShape(name.c_str(), p, nvinfer1::OptProfileSelector::kMAX));
      if (lo.size() != shape.size()) return -1;
      for (size_t i = 0; i < shape.size() && covers; ++i) covers = lo[i] <= shape[i] && shape[i] <= hi[i];
      if (!covers) break;
    }
    if (covers) return p;
  }
  return -1;
}

std::map<std::string, HostTensor> TrtEngine::infer(const std::map<std::string, HostTensor>& inputs) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, t] : inputs) shapes[name] = t.shape;
  const int profile = find_profile(shapes);
  if (profile < 0) throw std::runtime_error("no optimisation profile of this engine covers the input shapes");
  if (profile != active_profile_) {
    if (!context_->setOptimizationProfileAsync(profile, stream_)) throw std::runtime_error("setOptimizationProfile");
    active_profile_ = profile;
  }

  std::vector<void*> buffers;
  auto alloc = [&](size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    buffers.push_back(p);
    return p;
  };
  for (const auto& name : input_names()) {
    auto it = inputs.find(name);
    if (it == inputs.end()) throw std::runtime_error("missing input tensor '" + name + "'");
    const HostTensor& t = it->second;
    if (t.dtype != engine_->getTensorDataType(name.c_str())) throw std::runtime_error("dtype mismatch for " + name);
    context_->setInputShape(name.c_str(), to_dims(t.shape));
    void* dev = alloc(t.data.size());
    check(cudaMemcpyAsync(dev, t.data.data(), t.data.size(), cudaMemcpyHostToDevice, stream_), "copy in");
    context_->setTensorAddress(name.c_str(), dev);
  }
  std::map<std::string, HostTensor> outputs;
  std::map<std::string, void*> out_dev;
  for (const auto& name : output_names()) {
    HostTensor& t = outputs[name];
    t.shape = from_dims(context_->getTensorShape(name.c_str()));
    t.dtype = engine_->getTensorDataType(name.c_str());
    t.data.resize(t.numel() * element_size(t.dtype));
    out_dev[name] = alloc(t.data.size());
    context_->setTensorAddress(name.c_str(), out_dev[name]);
  }
  if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed");
  for (auto& [name, t] : outputs) {
    check(cudaMemcpyAsync(t.data.data(), out_dev[name], t.data.size(), cudaMemcpyDeviceToHost, stream_), "copy out");
  }
  check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  for (void* p : buffers) cudaFree(p);
  return outputs;
}

}  // namespace sana
