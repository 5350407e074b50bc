// sheaf/heap_report.hpp: a heap's description as people and scripts read it.
//
// One spelling for everything that shows a HeapInfo: `sheaf heap info`, the
// info and info.json files of a mounted store, and (to come) a PSRP server's
// `heaps` builtin. In libsheaf, so none of them needs libfuse for it.
#pragma once

#include <cstdint>
#include <string>

#include "sheaf/heap.hpp"

namespace sheaf {

// "512 B", "64.0 KiB", "1.5 GiB": binary units, one decimal.
std::string format_size(std::uint64_t bytes);
// "8388608 (8.0 MiB)": exact for scripts, readable for people.
std::string size_field(std::uint64_t bytes);

// "key:   value" lines, keys aligned, sizes as "bytes (human)"; ends in '\n'.
std::string heap_info_text(const HeapInfo& info);
// A JSON object, indented two spaces; ends in '\n'.
std::string heap_info_json(const HeapInfo& info);

}  // namespace sheaf
