// tree.cpp: the tree a mounted store shows. Which node each name is, the
// attributes of each, how long the kernel may keep them, directory listings
// and extended attributes; the request handlers (store_fs.cpp) ask here.
#include <sys/statvfs.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "bag_upload.hpp"
#include "bag_version.hpp"
#include "handles.hpp"
#include "names.hpp"
#include "object_names.hpp"
#include "request.hpp"
#include "sheaf/heap_report.hpp"
#include "store_fs.hpp"

namespace sheaf::fs {

Node StoreFs::node_of(fuse_ino_t ino) const {
  std::optional<Node> node = nodes_.get(ino);
  if (!node) fail(ESTALE);
  return *node;
}

// How long the kernel may keep a name (lookup) and attributes (lookup,
// getattr). Files' names: not at all, so no name outlives its object.
// Objects' attributes: not at all, so no size is stale. A bag's attributes:
// a listing's lifetime, since a bag never changes under one inode number (a
// new version is a new inode) and, without that, the kernel would ask for
// them before every read. Directories: a listing's lifetime, since every
// path walk checks each directory on the way (permissions need its
// attributes) and they change only when a heap is created or deleted.
StoreFs::Lifetimes StoreFs::lifetimes(const Node& node) const {
  switch (node.kind) {
    case NodeKind::kObject:
    case NodeKind::kInfoText:
    case NodeKind::kInfoJson:
      return {0, 0};
    case NodeKind::kBag:
      return {0, node.upload != 0 ? 0 : options_.listing_ttl};
    default:
      return {options_.listing_ttl, options_.listing_ttl};
  }
}

fuse_entry_param StoreFs::entry(const Node& node, struct stat attr, Lifetimes lifetimes) {
  fuse_entry_param e{};
  e.ino = nodes_.remember(node);
  attr.st_ino = e.ino;
  e.attr = attr;
  e.entry_timeout = lifetimes.name;
  e.attr_timeout = lifetimes.attributes;
  return e;
}

// An object's attributes: its size, its heap file's owner, mode and times.
struct stat StoreFs::object_attr(const struct stat& heap_file, std::uint64_t size) const {
  return file_attr(heap_file, size, heap_file.st_mode & 0666 & ~(options_.read_only ? 0222 : 0));
}

// A bag's attributes: its payload's size, its file's owner, mode, times and
// blocks (what the file really holds: bags may be sparse).
struct stat StoreFs::bag_attr(const struct stat& bag_file, std::uint64_t payload) const {
  struct stat attr =
      file_attr(bag_file, payload, bag_file.st_mode & 0666 & ~(options_.read_only ? 0222 : 0));
  attr.st_blocks = bag_file.st_blocks;
  return attr;
}

// The attributes of a node as the store has it now; ESTALE when the name
// now means something else (a replaced bag, a recreated heap).
struct stat StoreFs::attributes(const Node& node, fuse_ino_t ino) {
  const bool ro = options_.read_only;
  struct stat attr {};
  switch (node.kind) {
    case NodeKind::kRoot:
      attr = directory_attr(stat_path(store_.path()), ro);
      break;
    case NodeKind::kHeapsDir:
      attr = directory_attr(stat_path(store_.path() + "/heaps"), ro);
      break;
    case NodeKind::kBagsDir:
      attr = directory_attr(stat_path(store_.path() + "/bags"), ro);
      break;
    case NodeKind::kHeapDir:
    case NodeKind::kObjectsDir:
    case NodeKind::kInfoText:
    case NodeKind::kInfoJson:
    case NodeKind::kObject: {
      struct stat heap_stat {};
      std::shared_ptr<Heap> heap = heaps_.get(node.heap, &heap_stat);
      if (heap_stat.st_ino != node.identity && node.kind != NodeKind::kObject) fail(ESTALE);
      if (node.kind == NodeKind::kHeapDir || node.kind == NodeKind::kObjectsDir) {
        attr = directory_attr(heap_stat, ro);
      } else if (node.kind == NodeKind::kObject) {
        std::optional<ObjectInfo> object = heap->object(node.name);
        if (!object || object_identity(*object) != node.identity) fail(ESTALE);
        attr = object_attr(heap_stat, object->size);
      } else {
        const HeapInfo info = heap->info();
        const std::string text =
            node.kind == NodeKind::kInfoText ? heap_info_text(info) : heap_info_json(info);
        attr = file_attr(heap_stat, text.size(), 0444);
      }
      break;
    }
    case NodeKind::kBag: {
      if (node.upload != 0) fail(ESTALE);  // was being written; look it up again
      std::unique_ptr<BagFile> bag = open_bag_version(store_.bag_path(node.name));
      if (bag->identity() != node.identity) fail(ESTALE);
      attr = bag_attr(bag->st, bag->info.size);
      break;
    }
  }
  attr.st_ino = ino;
  return attr;
}

Node StoreFs::child(const Node& parent, const std::string& name, struct stat* attr) {
  Node node;
  switch (parent.kind) {
    case NodeKind::kRoot:
      if (name == "heaps") {
        node = plain_node(NodeKind::kHeapsDir);
      } else if (name == "bags") {
        node = plain_node(NodeKind::kBagsDir);
      } else {
        fail(ENOENT);
      }
      break;
    case NodeKind::kHeapsDir: {
      if (!valid_name(name)) fail(ENOENT);
      const struct stat heap_stat = stat_path(store_.heap_path(name));
      node = Node{NodeKind::kHeapDir, name, {}, static_cast<std::uint64_t>(heap_stat.st_ino), 0};
      break;
    }
    case NodeKind::kHeapDir:
      if (name == "objects") {
        node = Node{NodeKind::kObjectsDir, parent.heap, {}, parent.identity, 0};
      } else if (name == "info") {
        node = Node{NodeKind::kInfoText, parent.heap, {}, parent.identity, 0};
      } else if (name == "info.json") {
        node = Node{NodeKind::kInfoJson, parent.heap, {}, parent.identity, 0};
      } else {
        fail(ENOENT);
      }
      break;
    case NodeKind::kObjectsDir: {
      const std::optional<std::string> object_name = object_name_of(name);
      if (!object_name) fail(ENOENT);
      struct stat heap_stat {};
      std::shared_ptr<Heap> heap = heaps_.get(parent.heap, &heap_stat);
      std::optional<ObjectInfo> object = heap->object(*object_name);
      if (!object) fail(ENOENT);
      *attr = object_attr(heap_stat, object->size);
      return Node{NodeKind::kObject, parent.heap, *object_name, object_identity(*object), 0};
    }
    case NodeKind::kBagsDir: {
      if (hidden_upload_name(name)) {
        const std::shared_ptr<BagUpload> upload = hidden_upload(name);
        if (!upload) fail(ENOENT);
        *attr = upload_attributes(*upload, 0);
        return Node{NodeKind::kBag, {}, name, 0, upload->serial};
      }
      if (!valid_name(name)) fail(ENOENT);
      std::unique_ptr<BagFile> bag = open_bag_version(store_.bag_path(name));
      *attr = bag_attr(bag->st, bag->info.size);
      return Node{NodeKind::kBag, {}, name, bag->identity(), 0};
    }
    default:
      fail(ENOTDIR);
  }
  *attr = attributes(node, 0);  // the directories and info files
  return node;
}

void StoreFs::fill_directory(DirHandle& dir, const Node& node, fuse_ino_t ino) {
  auto add = [&](const std::string& name, const Node& child_node, const struct stat& attr) {
    dir.entries.push_back({name, child_node, attr});
  };
  // Both need an inode number: readdir(3) skips entries without one. The
  // kernel knows the real parent; ".." is only shown.
  const struct stat self_attr = attributes(node, ino);
  add(".", node, self_attr);
  add("..", node, self_attr);
  switch (node.kind) {
    case NodeKind::kRoot:
      add("heaps", plain_node(NodeKind::kHeapsDir),
          attributes(plain_node(NodeKind::kHeapsDir), kHeapsIno));
      add("bags", plain_node(NodeKind::kBagsDir),
          attributes(plain_node(NodeKind::kBagsDir), kBagsIno));
      break;
    case NodeKind::kHeapsDir:
      for (const HeapEntry& heap : store_.heaps()) {
        struct stat heap_stat {};
        if (::stat(store_.heap_path(heap.name).c_str(), &heap_stat) != 0) continue;  // just removed
        add(heap.name,
            Node{
                NodeKind::kHeapDir, heap.name, {}, static_cast<std::uint64_t>(heap_stat.st_ino), 0},
            directory_attr(heap_stat, options_.read_only));
      }
      break;
    case NodeKind::kHeapDir:
      for (const char* name : {"objects", "info", "info.json"}) {
        struct stat attr {};
        const Node entry_node = child(node, name, &attr);
        add(name, entry_node, attr);
      }
      break;
    case NodeKind::kObjectsDir: {
      struct stat heap_stat {};
      std::shared_ptr<Heap> heap = heaps_.get(node.heap, &heap_stat);
      if (heap_stat.st_ino != node.identity) fail(ESTALE);
      std::vector<ObjectInfo> objects = heap->objects();
      std::sort(objects.begin(), objects.end(),
                [](const ObjectInfo& a, const ObjectInfo& b) { return a.name < b.name; });
      dir.entries.reserve(dir.entries.size() + objects.size());
      for (const ObjectInfo& object : objects) {
        std::string file_name = file_name_of(object.name);
        if (file_name.size() > kMaxFileName) continue;  // see object_names.hpp
        add(std::move(file_name),
            Node{NodeKind::kObject, node.heap, object.name, object_identity(object), 0},
            object_attr(heap_stat, object.size));
      }
      break;
    }
    case NodeKind::kBagsDir:
      for (const std::string& name : store_.bag_names()) {
        try {
          std::unique_ptr<BagFile> bag = open_bag_version(store_.bag_path(name));
          add(name, Node{NodeKind::kBag, {}, name, bag->identity(), 0},
              bag_attr(bag->st, bag->info.size));
        } catch (const Errno&) {
          // removed between the listing and the open
        } catch (const Error& e) {
          log(e.message());  // a damaged bag: listed nowhere here; `sheaf bag verify` names it
        }
      }
      break;
    default:
      fail(ENOTDIR);
  }
}

// What moves when anything in a listed directory may have changed.
std::uint64_t StoreFs::directory_version(const Node& dir) {
  // Without the heap lock (info() would take it, and in network mode ask the
  // server for it, every period).
  if (dir.kind == NodeKind::kObjectsDir) return heaps_.get(dir.heap)->generation();
  const struct stat st = stat_path(store_.path() + "/bags");
  const std::uint64_t parts[] = {static_cast<std::uint64_t>(st.st_mtim.tv_sec),
                                 static_cast<std::uint64_t>(st.st_mtim.tv_nsec),
                                 static_cast<std::uint64_t>(st.st_ctim.tv_sec),
                                 static_cast<std::uint64_t>(st.st_ctim.tv_nsec)};
  return XXH64(parts, sizeof(parts), 0);
}

bool StoreFs::still_true(const ListingWatch::Entry& entry) {
  const Node& node = entry.node;
  if (node.kind == NodeKind::kObject) {
    const std::optional<ObjectInfo> object = heaps_.get(node.heap)->object(node.name);
    return object && object_identity(*object) == node.identity && object->size == entry.size;
  }
  return open_bag_version(store_.bag_path(node.name))->identity() == node.identity;
}

std::map<std::string, std::string> StoreFs::xattrs(const Node& node) {
  std::map<std::string, std::string> attrs;
  if (node.kind == NodeKind::kBag && node.upload == 0) {
    std::unique_ptr<BagFile> bag = open_bag_version(store_.bag_path(node.name));
    if (bag->identity() != node.identity) fail(ESTALE);
    const BagInfo& info = bag->info;
    // Named by the algorithm, so that a tool knows what it compares with:
    // user.sheaf.xxh128 (xxhsum -H2 of the payload) or, format 1, user.sheaf.xxh64.
    attrs[info.checksum.algorithm == BagChecksum::Algorithm::kXxh64 ? "user.sheaf.xxh64"
                                                                    : "user.sheaf.xxh128"] =
        info.checksum.hex();
    attrs["user.sheaf.created"] = std::to_string(info.created_ns);
    if (!info.element_type.empty()) {
      attrs["user.sheaf.type"] = info.element_type;
      attrs["user.sheaf.element_size"] = std::to_string(info.element_size);
    }
    for (const auto& [key, value] : info.tags) attrs["user.sheaf.tag." + key] = value;
  } else if (node.kind == NodeKind::kObject) {
    std::optional<ObjectInfo> object = heaps_.get(node.heap)->object(node.name);
    if (!object || object_identity(*object) != node.identity) fail(ESTALE);
    attrs["user.sheaf.type"] = object->type;
    attrs["user.sheaf.count"] = std::to_string(object->count);
    attrs["user.sheaf.offset"] = std::to_string(object->offset);
    attrs["user.sheaf.serial"] = std::to_string(object->serial);
  }
  return attrs;
}

}  // namespace sheaf::fs
