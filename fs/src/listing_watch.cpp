#include "listing_watch.hpp"

#include <algorithm>

namespace sheaf::fs {

ListingWatch::ListingWatch(Checks checks, std::chrono::milliseconds period)
    : checks_(std::move(checks)), period_(period) {}

ListingWatch::~ListingWatch() {
  stop();
}

void ListingWatch::start(fuse_session* session) {
  session_ = session;
  thread_ = std::thread([this] { run(); });
}

void ListingWatch::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ListingWatch::listed(fuse_ino_t dir_ino, const Node& dir, std::uint64_t version,
                          std::vector<Entry> entries, std::chrono::duration<double> ttl) {
  if (entries.empty() || ttl.count() <= 0) return;
  auto listing = std::make_shared<Listing>();
  listing->dir_ino = dir_ino;
  listing->dir = dir;
  listing->version = version;
  listing->entries = std::move(entries);
  listing->until = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(ttl);
  {
    std::lock_guard lock(mutex_);
    listings_.push_back(std::move(listing));
  }
  wake_.notify_all();
}

void ListingWatch::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (listings_.empty()) {
      wake_.wait(lock);  // idle: nothing listed is alive in the kernel
      continue;
    }
    wake_.wait_for(lock, period_);
    if (stopping_) break;
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(listings_, [&](const auto& listing) { return listing->until <= now; });
    std::vector<std::shared_ptr<Listing>> alive = listings_;
    lock.unlock();  // checks take heap locks and make kernel calls
    for (const auto& listing : alive) check(*listing);
    lock.lock();
  }
}

void ListingWatch::check(Listing& listing) {
  std::uint64_t version = 0;
  try {
    version = checks_.version(listing.dir);
  } catch (...) {
    version = listing.version + 1;  // cannot tell: check every entry
  }
  if (version == listing.version) return;
  listing.version = version;
  std::erase_if(listing.entries, [&](const Entry& entry) {
    bool holds = false;
    try {
      holds = checks_.still_true(listing.dir, entry);
    } catch (...) {
      // gone (ENOENT) or unreadable: either way the kernel must ask again
    }
    if (holds) return false;
    // Not in a request's path, so this cannot deadlock with the kernel's
    // directory lock; ENOENT (the kernel dropped it already) is fine.
    fuse_lowlevel_notify_inval_entry(session_, listing.dir_ino, entry.file_name.c_str(),
                                     entry.file_name.size());
    return true;
  });
}

}  // namespace sheaf::fs
