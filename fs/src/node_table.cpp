#include "node_table.hpp"

#include <xxhash.h>

namespace sheaf::fs {
namespace {

// Numbers below this are reserved for the fixed directories.
constexpr fuse_ino_t kFirstHashedIno = 16;

fuse_ino_t hash_of(const Node& node) {
  XXH64_state_t* state = XXH64_createState();
  XXH64_reset(state, 0);
  const auto kind = static_cast<std::uint8_t>(node.kind);
  XXH64_update(state, &kind, sizeof(kind));
  // Lengths keep ("ab","c") and ("a","bc") apart.
  const std::uint64_t lengths[2] = {node.heap.size(), node.name.size()};
  XXH64_update(state, lengths, sizeof(lengths));
  XXH64_update(state, node.heap.data(), node.heap.size());
  XXH64_update(state, node.name.data(), node.name.size());
  XXH64_update(state, &node.identity, sizeof(node.identity));
  XXH64_update(state, &node.upload, sizeof(node.upload));
  const fuse_ino_t hash = XXH64_digest(state);
  XXH64_freeState(state);
  return hash < kFirstHashedIno ? hash + kFirstHashedIno : hash;
}

}  // namespace

NodeTable::NodeTable() {
  entries_[kRootIno] = Entry{plain_node(NodeKind::kRoot), 0, true};
  entries_[kHeapsIno] = Entry{plain_node(NodeKind::kHeapsDir), 0, true};
  entries_[kBagsIno] = Entry{plain_node(NodeKind::kBagsDir), 0, true};
}

fuse_ino_t NodeTable::remember(const Node& node) {
  switch (node.kind) {
    case NodeKind::kRoot:
      return kRootIno;
    case NodeKind::kHeapsDir:
      return kHeapsIno;
    case NodeKind::kBagsDir:
      return kBagsIno;
    default:
      break;
  }
  std::lock_guard lock(mutex_);
  fuse_ino_t ino = hash_of(node);
  // Linear probing past numbers bound to other nodes; 2^64 numbers and at
  // most millions of nodes make a second probe already rare.
  for (;;) {
    if (ino < kFirstHashedIno) ino = kFirstHashedIno;
    auto [it, inserted] = entries_.try_emplace(ino, Entry{node, 0, false});
    if (inserted || it->second.node == node) {
      ++it->second.lookups;
      return ino;
    }
    ++ino;
  }
}

std::optional<Node> NodeTable::get(fuse_ino_t ino) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(ino);
  if (it == entries_.end()) return std::nullopt;
  return it->second.node;
}

void NodeTable::forget(fuse_ino_t ino, std::uint64_t lookups) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(ino);
  if (it == entries_.end() || it->second.permanent) return;
  if (it->second.lookups <= lookups) {
    entries_.erase(it);
  } else {
    it->second.lookups -= lookups;
  }
}

}  // namespace sheaf::fs
