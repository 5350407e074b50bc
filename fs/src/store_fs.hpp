// store_fs.hpp: the filesystem operations of a mounted store (libfuse3's
// low-level API), shaped like libfuse's passthrough_hp.cc: one method per
// request, each replying exactly once.
//
// What each path is and what each operation does to it is in
// sheaf/mount.hpp and docs/fs.md. The machinery, one concern per file:
//  - store_fs.cpp: the request handlers and the operation table;
//  - request.hpp, errors.hpp: how a handler fails (an errno or an Error)
//    and how that becomes its reply;
//  - tree.cpp (names.hpp): which node a name is, its attributes, how long
//    the kernel may keep them, listings and extended attributes;
//  - node_table.hpp: a stable inode number for every node;
//  - heap_cache.hpp: each heap opened once and kept open while the mount
//    lives, reopened when its file is replaced;
//  - handles.hpp: what an open file is: an object, an info text, a bag being
//    read (bag_version.hpp: its descriptor, so a replaced bag keeps serving
//    the old bytes), or a bag being written (bag_upload.hpp: the writer and
//    the policy that decides which close publishes it; closer.hpp: who closes);
//  - listing_watch.hpp: keeps the attributes a listing gave the kernel true.
#pragma once

#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "heap_cache.hpp"
#include "listing_watch.hpp"
#include "node_table.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/mount.hpp"
#include "sheaf/store.hpp"

namespace sheaf::fs {

struct BagUpload;
struct BagFile;

class StoreFs {
 public:
  StoreFs(Store store, MountOptions options);
  ~StoreFs();

  // The operation table for fuse_session_new(); userdata is the StoreFs.
  static const fuse_lowlevel_ops& operations();
  // Starts and stops the thread that keeps listed attributes true
  // (listing_watch.hpp); around the session's serving loop.
  void start_watching(fuse_session* session) { watch_.start(session); }
  void stop_watching() { watch_.stop(); }

  // Where errors that cannot reach a caller go (stderr, or syslog once the
  // server runs as a daemon).
  void log_to_syslog(bool yes) { syslog_ = yes; }
  void log(const std::string& message) const;

  // --- Requests (see fuse_lowlevel.h for each one's contract) ---
  void init(fuse_conn_info* conn);
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void forget(fuse_ino_t ino, std::uint64_t lookups);
  void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi);
  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void readdir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t offset, fuse_file_info* fi,
               bool plus);
  void releasedir(fuse_req_t req, fuse_file_info* fi);
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi);
  void read(fuse_req_t req, std::size_t size, off_t offset, fuse_file_info* fi);
  void write(fuse_req_t req, const char* data, std::size_t size, off_t offset, fuse_file_info* fi);
  void flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void release(fuse_req_t req, fuse_file_info* fi);
  void unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
  void rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
              const char* new_name, unsigned int flags);
  void statfs(fuse_req_t req);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, std::size_t size);
  void setxattr(fuse_req_t req, fuse_ino_t ino, const char* name);

  struct Handle;
  struct DirHandle;

 private:
  Node node_of(fuse_ino_t ino) const;
  // The node `name` in directory `parent`, with its attributes; throws an
  // errno (ENOENT) when there is none.
  Node child(const Node& parent, const std::string& name, struct stat* attr);
  struct stat attributes(const Node& node, fuse_ino_t ino);
  struct stat object_attr(const struct stat& heap_file, std::uint64_t size) const;
  struct stat bag_attr(const struct stat& bag_file, std::uint64_t payload) const;
  struct Lifetimes {
    double name = 0;        // seconds the kernel may keep the name -> inode binding
    double attributes = 0;  // seconds it may keep the attributes
  };
  Lifetimes lifetimes(const Node& node) const;
  fuse_entry_param entry(const Node& node, struct stat attr, Lifetimes lifetimes);
  void fill_directory(DirHandle& dir, const Node& node, fuse_ino_t ino);
  std::uint64_t directory_version(const Node& dir);
  bool still_true(const ListingWatch::Entry& entry);
  std::map<std::string, std::string> xattrs(const Node& node);
  std::shared_ptr<BagUpload> hidden_upload(const std::string& name);
  void rename_hidden(fuse_req_t req, const std::string& name, const std::string& new_name,
                     unsigned int flags);
  // A bag being written: new, or a new version of one (`old`: in place).
  std::shared_ptr<BagUpload> start_upload(const std::string& name, mode_t mode, pid_t opener_thread,
                                          bool replace, std::unique_ptr<BagFile> old = nullptr,
                                          bool keep_mode = false);
  struct stat upload_attributes(BagUpload& upload, fuse_ino_t ino);
  void extend(fuse_req_t req, BagUpload& upload, std::uint64_t size);
  void forget_upload(const BagUpload& upload);
  void set_upload_inode(BagUpload& upload, fuse_ino_t ino);
  std::shared_ptr<BagUpload> upload_for(fuse_ino_t ino, fuse_file_info* fi);

  Store store_;
  MountOptions options_;
  NodeTable nodes_;
  HeapCache heaps_;
  struct stat store_stat_ {};

  bool syslog_ = false;
  // Bags being written through this mount, by serial (Node::upload): the
  // kernel asks for their attributes by inode number before they exist in
  // the store.
  std::mutex uploads_mutex_;
  std::map<std::uint64_t, std::shared_ptr<BagUpload>> uploads_;
  std::atomic<std::uint64_t> next_upload_{0};
  ListingWatch watch_;
};

}  // namespace sheaf::fs
