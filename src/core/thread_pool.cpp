#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <utility>

namespace qserve {

namespace {
thread_local bool t_in_pool_worker = false;
std::atomic<int> g_requested_threads{0};
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < n_threads - 1; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& w : workers_) w.join();
}

bool ThreadPool::run_one_chunk() {
  // Called with mu_ held; releases it while running the chunk.
  if (job_ == nullptr || next_ >= job_n_) return false;
  const int64_t begin = next_;
  const int64_t end = std::min(job_n_, begin + job_chunk_);
  next_ = end;
  const auto* fn = job_;
  mu_.unlock();
  // An exception must not escape here: in a worker it would terminate the process, and in the
  // caller it would leave the job half-done with workers still pointing at fn. Keep the first
  // one and rethrow it from parallel_for once every chunk has finished.
  std::exception_ptr err;
  try {
    (*fn)(begin, end);
  } catch (...) {
    err = std::current_exception();
  }
  mu_.lock();
  if (err && !error_) error_ = err;
  if (--chunks_left_ == 0) cv_done_.notify_all();
  return true;
}

void ThreadPool::worker_loop() {
  t_in_pool_worker = true;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_work_.wait(lk, [this] { return stop_ || (job_ != nullptr && next_ < job_n_); });
    if (stop_) return;
    while (run_one_chunk()) {
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || t_in_pool_worker || n <= grain) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> job_lock(job_mu_);
  const int64_t max_chunks = static_cast<int64_t>(size()) * 4;
  const int64_t chunk = std::max(grain, (n + max_chunks - 1) / max_chunks);
  std::unique_lock<std::mutex> lk(mu_);
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = chunk;
  next_ = 0;
  chunks_left_ = (n + chunk - 1) / chunk;
  ++generation_;
  cv_work_.notify_all();
  t_in_pool_worker = true;  // nested calls from fn on this thread run serially
  while (run_one_chunk()) {
  }
  t_in_pool_worker = false;
  cv_done_.wait(lk, [this] { return chunks_left_ == 0; });
  job_ = nullptr;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void ThreadPool::set_global_threads(int n) { g_requested_threads = n; }

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    int n = g_requested_threads.load();
    if (n <= 0) {
      if (const char* env = std::getenv("QSERVE_THREADS")) n = std::atoi(env);
    }
    return n;
  }());
  return pool;
}

}  // namespace qserve
