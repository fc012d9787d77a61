// A barrier for the std::threads that stand for the CUDA threads of a block or a warp in the CPU
// emulators of the CUDA kernels (cuda_on_host.h, chunked_emulator.cpp). A thread that has returned
// from the kernel leaves it, so that the others do not wait for it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace fwp::host_cuda {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t gen = gen_;
    if (++waiting_ == n_) {
      release();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }
  void leave() {
    std::lock_guard<std::mutex> lock(m_);
    if (--n_ > 0 && waiting_ == n_) release();
  }

 private:
  void release() {
    waiting_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int n_, waiting_ = 0;
  uint64_t gen_ = 0;
};

}  // namespace fwp::host_cuda
