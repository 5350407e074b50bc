// sheaf/heap_report.hpp: a heap's description as people and scripts read it.
//
// One spelling for everything that shows a HeapInfo: `sheaf heap info`, and
// the info and info.json files of a mounted store.
#pragma once

#include <string>

#include "sheaf/heap.hpp"

namespace sheaf {

// "key:   value" lines, keys aligned, sizes as "bytes (human)"; ends in '\n'.
std::string heap_info_text(const HeapInfo& info);
// A JSON object, indented two spaces; ends in '\n'.
std::string heap_info_json(const HeapInfo& info);

}  // namespace sheaf
