// node_table.hpp: the inodes of a mounted store, as the kernel knows them.
//
// Every file and directory the kernel has looked up is a Node, named by what
// it shows (its kind, heap and name) and by the identity of the thing behind
// it: the inode of a heap or bag file, the offset of an object in its heap.
// The inode number is a hash of all of that, so it is the same on every
// lookup and in every mount of the store, and a replaced bag or a recreated
// object comes back as a new inode (the kernel's caches of the old one die
// with it). Collisions are resolved by probing.
//
// Invariant: a number stays bound to its node while the kernel holds lookups
// on it (FUSE's nlookup); forget() releases the node when the count is zero.
#pragma once

#include <fuse3/fuse_lowlevel.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace sheaf::fs {

enum class NodeKind : std::uint8_t {
  kRoot,        // MOUNT/
  kHeapsDir,    // MOUNT/heaps
  kBagsDir,     // MOUNT/bags
  kHeapDir,     // MOUNT/heaps/<heap>
  kObjectsDir,  // MOUNT/heaps/<heap>/objects
  kObject,      // MOUNT/heaps/<heap>/objects/<name>
  kInfoText,    // MOUNT/heaps/<heap>/info
  kInfoJson,    // MOUNT/heaps/<heap>/info.json
  kBag,         // MOUNT/bags/<bag>
};

struct Node {
  NodeKind kind = NodeKind::kRoot;
  std::string heap;  // the heap's name, for kinds under heaps/<heap>
  std::string name;  // the object's or the bag's name
  // The heap file's inode (heap kinds), the object's serial (kObject; its offset in heaps made
  // before serials) or the bag file's version (kBag): what makes "the same name" the same thing.
  std::uint64_t identity = 0;
  // Nonzero for a bag being written through this mount: the upload's serial
  // number (each create is a file of its own until it is published).
  std::uint64_t upload = 0;

  bool operator==(const Node&) const = default;
};

// A node that needs no heap, name or identity (the fixed directories).
inline Node plain_node(NodeKind kind) {
  Node node;
  node.kind = kind;
  return node;
}

// The three directories that always exist have fixed numbers.
inline constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;  // 1
inline constexpr fuse_ino_t kHeapsIno = 2;
inline constexpr fuse_ino_t kBagsIno = 3;

class NodeTable {
 public:
  NodeTable();

  // The inode number for `node`, counting one more kernel lookup of it.
  fuse_ino_t remember(const Node& node);
  // The node behind a number the kernel holds, if any.
  std::optional<Node> get(fuse_ino_t ino) const;
  // The kernel dropped `lookups` of its references to ino.
  void forget(fuse_ino_t ino, std::uint64_t lookups);

 private:
  struct Entry {
    Node node;
    std::uint64_t lookups = 0;
    bool permanent = false;
  };
  mutable std::mutex mutex_;
  std::unordered_map<fuse_ino_t, Entry> entries_;
};

}  // namespace sheaf::fs
