// The few CUDA runtime services the binding needs (devices, memory, copies, streams), behind a
// plain C++ interface so that the binding includes no CUDA header and nvcc never sees pybind11.
#pragma once
#include <cstddef>
#include <string>

namespace elman {
namespace cuda {

// Number of usable devices; 0 with the reason in *why (no driver, no device, ...).
int device_count(std::string* why);
std::string device_name(int device);
int runtime_version();  // e.g. 13000
int driver_version();   // 0 when no driver is installed
void set_device(int device);
int get_device();  // the calling thread's current device

// Makes `device` current for the object's lifetime and then restores the previous one, so that
// a call never leaves the caller's current device changed.
class CurrentDevice {
 public:
  explicit CurrentDevice(int device) : saved_(get_device()) {
    if (device != saved_) set_device(device);
    set_ = device != saved_;
  }
  ~CurrentDevice() {
    if (set_) {
      try {
        set_device(saved_);
      } catch (...) {
      }
    }
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int saved_;
  bool set_ = false;
};
// The device that owns a device (or managed) pointer; -1 for host or unknown memory.
int pointer_device(const void* p);

void* malloc_device(size_t bytes);        // throws std::runtime_error when it fails
void free_device(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes, void* stream);
void copy_to_host(void* dst, const void* src, size_t bytes, void* stream);
void synchronize(void* stream);
// Work queued on `waiter` after this call starts only when what was queued on `other` is done.
void stream_wait(void* waiter, void* other);

// A small host array copied to device memory for the work queued on one stream (the current
// device's): allocated and filled in stream order, freed in stream order when the object ends,
// so that the work queued meanwhile may read it and nothing waits. The copy reads a private
// staging buffer that the stream releases, so the host source may change once the constructor
// returns.
class StreamCopy {
 public:
  StreamCopy(const void* src, size_t bytes, void* stream);
  ~StreamCopy();
  StreamCopy(const StreamCopy&) = delete;
  StreamCopy& operator=(const StreamCopy&) = delete;
  const void* get() const { return p_; }

 private:
  void* p_ = nullptr;
  void* stream_;
};

}  // namespace cuda
}  // namespace elman
