// listing_watch.hpp: keeps what a listing told the kernel true while the
// kernel may still use it.
//
// A directory listing hands the kernel every entry's attributes with a
// lifetime (MountOptions::listing_ttl), so that `ls -l` does not ask again
// for each name. Until those lifetimes end, this watcher re-checks the
// listed directories every period: when a directory's version (the heap's
// generation, the bags directory's mtime) moved, every entry is compared
// with the store, and each one that no longer holds (removed, replaced,
// resized) is invalidated in the kernel, so the next stat asks again. A
// change made anywhere thus reaches even the kernel's cache within one
// period; listings and reads never use the cache at all.
#pragma once

#include <fuse3/fuse_lowlevel.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "node_table.hpp"

namespace sheaf::fs {

class ListingWatch {
 public:
  struct Entry {
    std::string file_name;
    Node node;
    std::uint64_t size = 0;
  };
  struct Checks {
    // Moves whenever anything in the directory may have changed; cheap.
    std::function<std::uint64_t(const Node& dir)> version;
    // Whether the entry still names the same thing with the same size (an
    // exception counts as no).
    std::function<bool(const Node& dir, const Entry& entry)> still_true;
  };

  ListingWatch(Checks checks, std::chrono::milliseconds period);
  ~ListingWatch();  // stops the thread
  ListingWatch(const ListingWatch&) = delete;
  ListingWatch& operator=(const ListingWatch&) = delete;

  // Starts watching; invalidations go to this session.
  void start(fuse_session* session);
  void stop();
  // A listing of `dir` (inode `dir_ino`, at `version`) handed these entries
  // to the kernel, to be trusted for `ttl`.
  void listed(fuse_ino_t dir_ino, const Node& dir, std::uint64_t version,
              std::vector<Entry> entries, std::chrono::duration<double> ttl);

 private:
  struct Listing {
    fuse_ino_t dir_ino = 0;
    Node dir;
    std::uint64_t version = 0;
    std::vector<Entry> entries;
    std::chrono::steady_clock::time_point until;
  };
  void run();
  void check(Listing& listing);

  Checks checks_;
  std::chrono::milliseconds period_;
  fuse_session* session_ = nullptr;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<std::shared_ptr<Listing>> listings_;
  std::thread thread_;
};

}  // namespace sheaf::fs
