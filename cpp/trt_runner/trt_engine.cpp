// UNVERIFIED (see trt_engine.h): compiles against the TensorRT 10/11 headers; never linked or run here.
#include "trt_engine.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace sana {
namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << std::endl;
  }
};
Logger g_logger;

void check(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(err));
}

nvinfer1::Dims to_dims(const std::string& name, const std::vector<int64_t>& shape) {
  nvinfer1::Dims d{};
  if (shape.size() > static_cast<size_t>(nvinfer1::Dims::MAX_DIMS)) {
    throw std::runtime_error("input '" + name + "' has more dimensions than TensorRT supports");
  }
  d.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) d.d[i] = shape[i];
  return d;
}

std::vector<int64_t> from_dims(const nvinfer1::Dims& d) {
  if (d.nbDims < 0) return {};
  return std::vector<int64_t>(d.d, d.d + d.nbDims);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? "x" : "") << shape[i];
  return s.str();
}

// Waits for the stream when leaving a scope, also by an exception, so no copy into or out of host memory that is
// about to be freed can still be in flight.
class SyncOnExit {
 public:
  explicit SyncOnExit(cudaStream_t stream) : stream_(stream) {}
  ~SyncOnExit() { cudaStreamSynchronize(stream_); }
  SyncOnExit(const SyncOnExit&) = delete;
  SyncOnExit& operator=(const SyncOnExit&) = delete;

 private:
  cudaStream_t stream_;
};

}  // namespace

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kUINT8:
    case nvinfer1::DataType::kBOOL:
    case nvinfer1::DataType::kFP8: return 1;
    default: throw std::runtime_error("unsupported TensorRT data type at the engine boundary (sub-byte type?)");
  }
}

size_t HostTensor::numel() const {
  size_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) throw std::runtime_error("negative dimension in shape " + shape_str(shape));
    n *= static_cast<size_t>(s);
  }
  return n;
}

// --- DeviceBuffer / CudaStream ------------------------------------------------------------------------------------
DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::release() noexcept {
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

void DeviceBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_ && ptr_) return;
  release();
  void* p = nullptr;
  check(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
  ptr_ = p;
  bytes_ = bytes;
}

CudaStream::CudaStream() { check(cudaStreamCreate(&stream_), "cudaStreamCreate"); }

CudaStream::~CudaStream() {
  if (stream_) cudaStreamDestroy(stream_);
}

// --- TrtEngine ----------------------------------------------------------------------------------------------------
TrtEngine::TrtEngine(const std::string& plan_path, const std::string& plugin_library) {
  runtime_.reset(nvinfer1::createInferRuntime(g_logger));
  if (!runtime_) throw std::runtime_error("createInferRuntime failed (is a CUDA GPU visible?)");
  if (!plugin_library.empty() && runtime_->getPluginRegistry().loadLibrary(plugin_library.c_str()) == nullptr) {
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
  if (!context_) throw std::runtime_error("createExecutionContext failed (out of device memory?)");
  stream_ = std::make_unique<CudaStream>();
  for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
    const char* n = engine_->getIOTensorName(i);
    (engine_->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT ? inputs_ : outputs_).emplace_back(n);
  }
  // Allocate the input buffers once, at the largest shape any profile accepts.
  for (const auto& name : inputs_) {
    size_t most = 0;
    for (int32_t p = 0; p < engine_->getNbOptimizationProfiles(); ++p) {
      HostTensor t;
      t.shape = from_dims(engine_->getProfileShape(name.c_str(), p, nvinfer1::OptProfileSelector::kMAX));
      bool known = true;
      for (int64_t s : t.shape) known = known && s >= 0;
      if (known) most = std::max(most, t.numel() * element_size(engine_->getTensorDataType(name.c_str())));
    }
    if (most > 0) buffers_[name].reserve(most);
  }
}

TrtEngine::~TrtEngine() {
  if (stream_) cudaStreamSynchronize(stream_->get());  // nothing may still use the buffers freed next
}

DeviceBuffer& TrtEngine::buffer(const std::string& name, size_t bytes) {
  DeviceBuffer& b = buffers_[name];
  b.reserve(bytes);
  return b;
}

int TrtEngine::find_profile(const std::map<std::string, std::vector<int64_t>>& shapes) const {
  for (int32_t p = 0; p < engine_->getNbOptimizationProfiles(); ++p) {
    bool covers = true;
    for (const auto& [name, shape] : shapes) {
      auto lo = from_dims(engine_->getProfileShape(name.c_str(), p, nvinfer1::OptProfileSelector::kMIN));
      auto hi = from_dims(engine_->getProfileShape(name.c_str(), p, nvinfer1::OptProfileSelector::kMAX));
      if (lo.size() != shape.size() || hi.size() != shape.size()) {
        covers = false;
        break;
      }
      for (size_t i = 0; i < shape.size() && covers; ++i) covers = lo[i] <= shape[i] && shape[i] <= hi[i];
      if (!covers) break;
    }
    if (covers) return p;
  }
  return -1;
}

std::map<std::string, HostTensor> TrtEngine::infer(const std::map<std::string, HostTensor>& inputs) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& name : inputs_) {
    auto it = inputs.find(name);
    if (it == inputs.end()) throw std::runtime_error("missing input tensor '" + name + "'");
    shapes[name] = it->second.shape;
  }
  for (const auto& [name, t] : inputs) {
    if (!shapes.count(name)) throw std::runtime_error("the engine has no input named '" + name + "'");
  }
  const int profile = find_profile(shapes);
  if (profile < 0) throw std::runtime_error("no optimisation profile of this engine covers the input shapes");
  cudaStream_t stream = stream_->get();
  std::map<std::string, HostTensor> outputs;
  SyncOnExit sync(stream);  // declared after `outputs`: waits for the copies into it before it can be freed
  if (profile != active_profile_) {
    if (!context_->setOptimizationProfileAsync(profile, stream)) {
      throw std::runtime_error("setOptimizationProfileAsync(" + std::to_string(profile) + ") failed");
    }
    active_profile_ = profile;
  }

  for (const auto& name : inputs_) {
    const HostTensor& t = inputs.at(name);
    const nvinfer1::DataType want = engine_->getTensorDataType(name.c_str());
    if (t.dtype != want) throw std::runtime_error("dtype mismatch for input '" + name + "'");
    const size_t bytes = t.numel() * element_size(want);
    if (t.data.size() != bytes) {
      throw std::runtime_error("input '" + name + "' has " + std::to_string(t.data.size()) + " bytes; shape " +
                               shape_str(t.shape) + " needs " + std::to_string(bytes));
    }
    if (!context_->setInputShape(name.c_str(), to_dims(name, t.shape))) {
      throw std::runtime_error("setInputShape('" + name + "', " + shape_str(t.shape) +
                               ") failed: outside profile " + std::to_string(profile) + " or wrong rank");
    }
    DeviceBuffer& dev = buffer(name, bytes);
    check(cudaMemcpyAsync(dev.get(), t.data.data(), bytes, cudaMemcpyHostToDevice, stream), "copy of " + name);
    if (!context_->setTensorAddress(name.c_str(), dev.get())) {
      throw std::runtime_error("setTensorAddress('" + name + "') failed");
    }
  }
  if (!context_->allInputDimensionsSpecified()) throw std::runtime_error("not every input shape is specified");

  for (const auto& name : outputs_) {
    HostTensor& t = outputs[name];
    t.shape = from_dims(context_->getTensorShape(name.c_str()));
    for (int64_t s : t.shape) {
      if (s < 0) throw std::runtime_error("output '" + name + "' has a data-dependent shape; not supported");
    }
    t.dtype = engine_->getTensorDataType(name.c_str());
    t.data.resize(t.numel() * element_size(t.dtype));
    if (!context_->setTensorAddress(name.c_str(), buffer(name, t.data.size()).get())) {
      throw std::runtime_error("setTensorAddress('" + name + "') failed");
    }
  }
  if (!context_->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed (see the [TensorRT] messages)");
  for (auto& [name, t] : outputs) {
    check(cudaMemcpyAsync(t.data.data(), buffers_.at(name).get(), t.data.size(), cudaMemcpyDeviceToHost, stream),
          "copy of " + name);
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  check(cudaGetLastError(), "after inference");
  return outputs;
}

}  // namespace sana
