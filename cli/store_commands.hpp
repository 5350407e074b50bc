// cli/store_commands.hpp: `sheaf store <verb>`, the commands for store directories.
#pragma once

#include <CLI/CLI.hpp>

namespace sheaf::cli {

// Adds the `store` noun and its verbs (init, ls) to the application.
// Failures are thrown as sheaf::Error.
void register_store_commands(CLI::App& app);

}  // namespace sheaf::cli
