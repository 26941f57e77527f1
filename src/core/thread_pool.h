// A small fixed-size thread pool with a blocking parallel_for. The CPU backend uses it for
// GEMMs and attention so the tests run fast on 2 cores. Nested parallel_for calls from inside a
// worker run serially (no deadlock).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qserve {

class ThreadPool {
 public:
  // n_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }  // workers + caller

  // Runs fn(begin, end) over [0, n) split into chunks of at least `grain` items; blocks until
  // all chunks are done. The calling thread works too. If fn throws, the remaining chunks still
  // run and the first exception is rethrown here.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool (size from QSERVE_THREADS or the core count), created on first use.
  static ThreadPool& global();
  // Sets the size of the global pool; must be called before its first use to take effect.
  static void set_global_threads(int n);

 private:
  void worker_loop();
  bool run_one_chunk();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_;
  std::condition_variable cv_done_;
  bool stop_ = false;
  // Current job.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunk_ = 0;
  int64_t next_ = 0;
  int64_t chunks_left_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;  // first exception thrown by a chunk of the current job
  std::mutex job_mu_;  // serialises concurrent parallel_for callers
};

}  // namespace qserve
