// Minimal TensorRT 10/11 engine wrapper: deserialize a plan, pick the optimisation profile that covers the input
// shapes, bind device buffers by tensor name, enqueue on a CUDA stream. No torch dependency.
//
// UNVERIFIED: written against the public TensorRT 10.x/11.x C++ API (NvInferRuntime.h: IRuntime, ICudaEngine,
// IExecutionContext with setInputShape / setTensorAddress / enqueueV3). It compiles against those headers, but
// TensorRT and a GPU are not available where this project is tested, so it has never been linked or run.
//
// Resource ownership: every TensorRT object, the CUDA stream and every device buffer is owned by an RAII member,
// so all of them are released on every path, including when a constructor or infer() throws. Device buffers are
// allocated once per I/O tensor and only grow (reallocated when a call needs more bytes than any call before).
#pragma once

#include <cstddef>
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

// Bytes per element of the TensorRT types that can cross the engine boundary here; throws for the others.
size_t element_size(nvinfer1::DataType dtype);

// An owning cudaMalloc'd buffer: freed by its destructor, grow-only, movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // At least `bytes` of device memory; reallocates (contents lost) only when the buffer is too small.
  void reserve(size_t bytes);
  void* get() const { return ptr_; }
  size_t capacity() const { return bytes_; }

 private:
  void release() noexcept;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// An owning CUDA stream.
class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class TrtEngine {
 public:
  // `plugin_library`: path of a TensorRT plugin library to load into the runtime's plugin registry, or empty
  // when the engine needs none.
  explicit TrtEngine(const std::string& plan_path, const std::string& plugin_library = "");
  ~TrtEngine();
  TrtEngine(const TrtEngine&) = delete;
  TrtEngine& operator=(const TrtEngine&) = delete;

  // Index of the first profile whose [min, max] covers every input shape; -1 when none does.
  int find_profile(const std::map<std::string, std::vector<int64_t>>& shapes) const;

  // Runs the engine on host tensors (copies in, executes, copies out); outputs named as in the engine.
  // Not thread-safe: one call at a time per TrtEngine (it reuses its context and buffers).
  std::map<std::string, HostTensor> infer(const std::map<std::string, HostTensor>& inputs);

  const std::vector<std::string>& input_names() const { return inputs_; }
  const std::vector<std::string>& output_names() const { return outputs_; }

 private:
  // TensorRT 10 objects are released with `delete` (destroy() is gone).
  struct TrtDelete {
    template <class T>
    void operator()(T* p) const noexcept {
      delete p;
    }
  };
  DeviceBuffer& buffer(const std::string& name, size_t bytes);

  // Members are destroyed in reverse order: the buffers and the stream (after ~TrtEngine synchronised it), then
  // the context before the engine and the engine before the runtime, as TensorRT requires.
  std::unique_ptr<nvinfer1::IRuntime, TrtDelete> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine, TrtDelete> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext, TrtDelete> context_;
  std::unique_ptr<CudaStream> stream_;
  std::map<std::string, DeviceBuffer> buffers_;  // one per I/O tensor, grow-only
  std::vector<std::string> inputs_, outputs_;
  int active_profile_ = -1;
};

}  // namespace sana
