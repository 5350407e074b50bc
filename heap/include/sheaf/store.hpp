// sheaf/store.hpp: a store, the directory that holds heaps and databags.
//
//   STORE/
//     .sheaf-store        marker: format version and the store's UUID
//     heaps/NAME.heap     heaps (sheaf/heap.hpp)
//     bags/NAME.bag       databags (sheaf/bag.hpp)
//     tmp/                bags being written; never listed, swept of dead writers' files
//
// Everything above the base layer names heaps and bags through a store, as
// STORE/NAME. Names are 1 to 200 bytes of letters, digits, '.', '_' and '-',
// not starting with '.'.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sheaf/bag.hpp"
#include "sheaf/error.hpp"

namespace sheaf {

struct HeapEntry {
  std::string name;
  std::uint64_t file_size = 0;
};

struct BagCheck {
  std::string name;
  std::string problem;  // empty when the bag is sound
  bool ok() const { return problem.empty(); }
};

class Store {
 public:
  // Makes DIR a store (creating DIR if needed); an existing store is left as
  // it is; a non-empty directory that is not a store is refused.
  static Result<Store> init(const std::string& dir);
  static Result<Store> open(const std::string& dir);
  static bool is_store(const std::string& dir);
  // Throws Error(kInvalidArgument) naming the rule a bad name breaks (with
  // errno ENAMETOOLONG for a name longer than kMaxNameLength, else EINVAL).
  static void check_name(std::string_view name);
  static constexpr std::size_t kMaxNameLength = 200;

  const std::string& path() const noexcept { return path_; }

  // --- Bags ---
  Result<Bag> open_bag(std::string_view name, const BagOpenOptions& options = {}) const;
  BagWriter create_bag(std::string_view name, const BagWriteOptions& options = {});
  BagInfo put_bag(std::string_view name, std::span<const std::byte> payload,
                  const BagWriteOptions& options = {});
  BagInfo bag_info(std::string_view name) const;  // the header only, checksummed
  std::vector<std::string> bag_names() const;     // sorted
  bool remove_bag(std::string_view name);
  // Renames bag `from` to `to`, atomically and durably (the directory is
  // fsynced), replacing a bag called `to` unless `replace` is false
  // (Error(kAlreadyExists) then). Error(kNotFound) if there is no `from`.
  void rename_bag(std::string_view from, std::string_view to, bool replace = true);
  // Recomputes payload checksums: one bag (Error(kNotFound) if there is no
  // such bag), or all of them.
  std::vector<BagCheck> verify(std::optional<std::string_view> name = std::nullopt,
                               const Progress& progress = {}) const;
  std::string bag_path(std::string_view name) const;

  // --- Heaps ---
  std::string heap_path(std::string_view name) const;
  std::vector<HeapEntry> heaps() const;  // sorted by name

  // How tools spell a heap: a path to a heap file, or STORE/NAME for the heap
  // NAME in the store STORE. Returns the file's path.
  static std::string resolve_heap(const std::string& spec);

 private:
  explicit Store(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace sheaf
