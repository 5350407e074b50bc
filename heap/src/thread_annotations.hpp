// thread_annotations.hpp: Clang's thread-safety attributes, as LevelDB's
// port/thread_annotations.h spells them. Internal. Empty for other compilers;
// Clang builds (the fuzz stage of scripts/test) compile with -Wthread-safety,
// so a call that needs a lock the caller is not known to hold is an error.
#pragma once

#include <mutex>

#if defined(__clang__)
#define SHEAF_THREAD_ATTRIBUTE(x) __attribute__((x))
#else
#define SHEAF_THREAD_ATTRIBUTE(x)
#endif

#define CAPABILITY(x) SHEAF_THREAD_ATTRIBUTE(capability(x))
#define SCOPED_CAPABILITY SHEAF_THREAD_ATTRIBUTE(scoped_lockable)
#define GUARDED_BY(x) SHEAF_THREAD_ATTRIBUTE(guarded_by(x))
#define REQUIRES(...) SHEAF_THREAD_ATTRIBUTE(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) SHEAF_THREAD_ATTRIBUTE(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) SHEAF_THREAD_ATTRIBUTE(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) SHEAF_THREAD_ATTRIBUTE(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) SHEAF_THREAD_ATTRIBUTE(release_capability(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) SHEAF_THREAD_ATTRIBUTE(assert_capability(x))
#define EXCLUDES(...) SHEAF_THREAD_ATTRIBUTE(locks_excluded(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS SHEAF_THREAD_ATTRIBUTE(no_thread_safety_analysis)

namespace sheaf {

// A std::mutex the analysis can follow (libstdc++'s is not annotated).
class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }
  bool try_lock() SHEAF_THREAD_ATTRIBUTE(try_acquire_capability(true)) { return mutex_.try_lock(); }

 private:
  std::mutex mutex_;
};

// std::lock_guard for it.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() RELEASE() { mutex_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mutex_;
};

}  // namespace sheaf
