// cli/heap_commands.hpp: `sheaf heap <verb>`, the commands for heap files.
#pragma once

#include <CLI/CLI.hpp>

namespace sheaf::cli {

// Adds the `heap` noun and its verbs (create, info, ls, put, cat, rm, check)
// to the application. Each verb runs as a CLI11 callback; failures are thrown
// as sheaf::Error, and `heap check` reports problems by throwing
// CLI::RuntimeError(kExitFailure).
void register_heap_commands(CLI::App& app);

}  // namespace sheaf::cli
