// sheaf: the command-line tool, git-style (`sheaf <noun> <verb> ...`).
//
// Each noun registers its verbs from its own file; main parses, runs the
// chosen verb and turns whatever went wrong into one line on standard error
// and an exit status (see exit_codes.hpp and docs/cli.md).
#include <CLI/CLI.hpp>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "bag_commands.hpp"
#include "exit_codes.hpp"
#include "heap_commands.hpp"
#include "mount_commands.hpp"
#include "msg_commands.hpp"
#include "sheaf/error.hpp"
#include "store_commands.hpp"

namespace {

using namespace sheaf::cli;

// CLI11's own codes (105, 106, ...) mean "bad usage" to us; RuntimeError
// carries a verb's chosen status (`heap check`, `bag verify` -> 1); --help and --version are 0.
int parse_error_status(const CLI::App& app, const CLI::ParseError& e) {
  const int code = app.exit(e);
  if (code == 0 || e.get_name() == "RuntimeError") return code;
  return kExitUsage;
}

// The library's message; for an operating-system error, with the system's
// words for errno if the message lacks them.
std::string describe(const sheaf::Error& e) {
  std::string message = e.message();
  if (e.code() == sheaf::Errc::kSystem && e.sys_errno() != 0) {
    const std::string reason = std::strerror(e.sys_errno());
    if (message.find(reason) == std::string::npos) message += ": " + reason;
  }
  return message;
}

// "sheaf bag frob": CLI11 says only that a subcommand is required. Follows
// argv down the command tree and names the first word that is not a command
// where one was expected (as git does), or returns "".
std::string unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* current = &app;
  std::string path = "sheaf";
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') continue;         // an option (or its value: close enough)
    if (current->get_subcommands({}).empty()) return "";  // a verb: its arguments follow
    CLI::App* next = nullptr;
    try {
      next = current->get_subcommand(word);
    } catch (const CLI::OptionNotFound&) {
      std::string known;
      for (const CLI::App* command : current->get_subcommands({})) {
        known += (known.empty() ? "" : ", ") + command->get_name();
      }
      return "'" + word + "' is not a command of '" + path + "' (its commands: " + known +
             "); see '" + path + " --help'";
    }
    current = next;
    path += " " + word;
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sheaf: shared heaps and databags", "sheaf"};
  // Set before the nouns are added: subcommands inherit the footer and the
  // failure message.
  app.footer(kExitStatusHelp);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "sheaf: " + std::string(e.what()) + "\nRun with --help for more information.\n";
  });
  app.set_version_flag("--version", "sheaf " SHEAF_VERSION);
  app.require_subcommand(1);

  register_store_commands(app);
  register_heap_commands(app);
  register_bag_commands(app);
  register_mount_commands(app);
  register_msg_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_name() == "RequiredError") {
      if (const std::string unknown = unknown_command(app, argc, argv); !unknown.empty()) {
        std::cerr << "sheaf: " << unknown << '\n';
        return kExitUsage;
      }
    }
    return parse_error_status(app, e);
  } catch (const sheaf::Error& e) {
    std::cerr << "sheaf: " << describe(e) << '\n';
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "sheaf: unexpected error: " << e.what() << '\n';
    return kExitFailure;
  }
  return kExitOk;
}
