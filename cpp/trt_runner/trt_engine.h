// Minimal TensorRT 10/11 engine wrapper: deserialize a plan, pick the optimisation profile that covers the input
// shapes, bind device buffers by tensor name, enqueue on a CUDA stream. No torch dependency.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <NvInfer.h>

namespace sana {

struct HostTensor {
  std::vector<int64_t> shape;
  nvinfer1::DataType dtype = nvinfer1::DataType::kFLOAT;
  std::vector<uint8_t> data;  // host bytes, row-major

  size_t numel() const;
};

class TrtEngine {
 public:
  // `plugin_library`: path of libsana_plugins.so (sana::LinearAttention / sana::MixFFN), or empty when the
  // engine was built from the plain ONNX function bodies.
  explicit TrtEngine(const std::string& plan_path, const std::string& plugin_library = "");
  ~TrtEngine();

  // Index of the first profile whose [min, max] covers every input shape; -1 when none does.
  int find_profile(const std::map<std::string, std::vector<int64_t>>& shapes) const;

  // Runs the engine on host tensors (copies in, executes, copies out); outputs named as in the engine.
  std::map<std::string, HostTensor> infer(const std::map<std::string, HostTensor>& inputs);

  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;

 private:
  struct Destroy {
    template <class T>
    void operator()(T* p) const { delete p; }
  };
  std::unique_ptr<nvinfer1::IRuntime, Destroy> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine, Destroy> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext, Destroy> context_;
  cudaStream_t stream_ = nullptr;
  int active_profile_ = -1;
};

}  // namespace sana
