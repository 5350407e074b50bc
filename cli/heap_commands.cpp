#include "heap_commands.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "exit_codes.hpp"
#include "io.hpp"
#include "output.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/heap_report.hpp"
#include "sheaf/store.hpp"
#include "units.hpp"

namespace sheaf::cli {
namespace {

// --- Finding the heap ------------------------------------------------------------
// Every verb names its heap with one argument and goes through these two
// functions: the argument is a heap file's path, or STORE/NAME for the heap
// NAME in the store STORE (STORE/heaps/NAME.heap).

// The file a heap argument stands for.
std::string heap_location(const std::string& spec) {
  return Store::resolve_heap(spec);
}

// Opens the heap an argument names; throws sheaf::Error (caught in main).
// The verbs that only read open it read-only: they write nothing, and work
// on a heap file the user may only read.
Heap open_heap(const std::string& spec, const OpenOptions& options = {}) {
  return Heap::open(heap_location(spec), options).value();
}

Heap open_heap_to_read(const std::string& spec) {
  OpenOptions options;
  options.read_only = true;
  return open_heap(spec, options);
}

// --- Errors ----------------------------------------------------------------------

Error no_such_object(const Heap& heap, const std::string& name) {
  return Error(Errc::kNotFound, "heap " + heap.path() + ": no object named '" + name + "'");
}

// --- The verbs ---------------------------------------------------------------------

struct CreateArgs {
  std::string heap;
  std::uint64_t size = CreateOptions{}.initial_size;
  std::uint64_t max_size = 0;
  std::string mode = "auto";
};

void heap_create(const CreateArgs& args) {
  CreateOptions options;
  options.initial_size = args.size;
  options.max_size = args.max_size;
  if (args.mode == "local") options.open.mode = LockMode::kLocal;
  if (args.mode == "network") options.open.mode = LockMode::kNetwork;
  Heap heap = Heap::create(heap_location(args.heap), options).value();
  HeapInfo info = heap.info();
  std::cout << "created " << info.path << ": " << format_size(info.size) << ", "
            << lock_mode_name(info.mode) << " mode\n";
}

struct InfoArgs {
  std::string heap;
  bool json = false;
};

void heap_info(const InfoArgs& args) {
  // The same words as the info and info.json files of a mounted store.
  const HeapInfo info = open_heap_to_read(args.heap).info();
  std::cout << (args.json ? heap_info_json(info) : heap_info_text(info));
}

struct LsArgs {
  std::string heap;
  bool json = false;
  bool names_only = false;
};

void heap_ls(const LsArgs& args) {
  std::vector<ObjectInfo> objects = open_heap_to_read(args.heap).objects();
  std::sort(objects.begin(), objects.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.name < b.name; });
  if (args.json) {
    Json list = Json::array();
    for (const ObjectInfo& object : objects) {
      list.push_back({{"name", object.name},
                      {"type", object.type},
                      {"size", object.size},
                      {"count", object.count},
                      {"offset", object.offset},
                      {"serial", object.serial}});
    }
    print_json(list);
    return;
  }
  if (objects.empty()) return;  // like ls of an empty directory: no header either
  if (args.names_only) {
    for (const ObjectInfo& object : objects) std::cout << object.name << '\n';
    return;
  }
  // NAME  TYPE  COUNT  SIZE, with names and types padded and numbers right-aligned.
  std::vector<std::vector<std::string>> rows = {{"NAME", "TYPE", "COUNT", "SIZE"}};
  for (const ObjectInfo& object : objects) {
    rows.push_back(
        {object.name, object.type, std::to_string(object.count), std::to_string(object.size)});
  }
  print_table(rows, {false, false, true, true});
}

struct PutArgs {
  std::string heap;
  std::string name;
  std::string file;
  bool force = false;
};

void heap_put(const PutArgs& args) {
  // Read first: the heap stays unlocked while a slow pipe trickles in.
  const std::vector<std::byte> bytes = read_input(args.file);
  Heap heap = open_heap(args.heap);
  // One critical section, so other processes see no object or a complete one.
  heap.exclusive([&] {
    if (heap.object(args.name)) {
      if (!args.force) {
        throw Error(Errc::kAlreadyExists, "heap " + heap.path() + ": an object named '" +
                                              args.name + "' exists (--force replaces it)");
      }
      heap.erase(args.name);
    }
    // Filled while the object is still pending: a put killed mid-copy leaves nothing.
    heap.construct_with<std::byte>(args.name, bytes.size(), [&](std::byte* first, std::size_t n) {
      if (n != 0) std::memcpy(first, bytes.data(), n);
    });
  });
}

struct CatArgs {
  std::string heap;
  std::string name;
};

void heap_cat(const CatArgs& args) {
  const Heap heap = open_heap_to_read(args.heap);
  // A consistent copy (under the lock, or retried without it), written
  // outside it: a slow reader of stdout does not hold up the heap.
  write_output(heap.copy_object(args.name));
}

struct RmArgs {
  std::string heap;
  std::string name;
};

void heap_rm(const RmArgs& args) {
  Heap heap = open_heap(args.heap);
  if (!heap.erase(args.name)) throw no_such_object(heap, args.name);
}

struct CheckArgs {
  std::string heap;
  bool json = false;
  bool repair = false;
};

// A heap whose header cannot even be validated is reported like any other
// problem, with exit 1.
CheckReport checked(const std::function<CheckReport()>& check) {
  try {
    return check();
  } catch (const Error& e) {
    if (e.code() != Errc::kCorrupted) throw;
    CheckReport report;
    report.problems.push_back(e.message());
    return report;
  }
}

void heap_check(const CheckArgs& args) {
  // Read-only: checking writes nothing and repairs nothing. What a crash
  // left is listed as what the next writer will repair; damage no crash
  // explains makes the exit status 1.
  CheckReport report = checked([&] { return open_heap_to_read(args.heap).check(); });
  std::vector<std::string> repaired;
  if (args.repair && (!report.ok() || !report.repairs.empty())) {
    // The first process to open a heap repairs it; repair_damage lets it
    // rebuild past damage too. Then look again.
    repaired = report.problems;
    repaired.insert(repaired.end(), report.repairs.begin(), report.repairs.end());
    report = checked([&] {
      OpenOptions options;
      options.repair_damage = true;
      Heap heap = open_heap(args.heap, options);
      CheckReport after = heap.check();
      heap.close().value();
      return after;
    });
  }
  if (args.json) {
    print_json({{"ok", report.ok()},
                {"blocks", report.blocks},
                {"free_blocks", report.free_blocks},
                {"objects", report.named_objects},
                {"problems", report.problems},
                {"repairs", report.repairs},
                {"repaired", repaired}});
  } else {
    for (const std::string& line : repaired) std::cout << "repaired: " << line << '\n';
    for (const std::string& problem : report.problems) std::cout << "damaged: " << problem << '\n';
    for (const std::string& repair : report.repairs) {
      std::cout << "repair due (the next writer to open or lock it does it): " << repair << '\n';
    }
    if (report.ok()) {
      std::cout << "ok: " << report.blocks << " blocks, " << report.named_objects << " objects\n";
    } else if (!args.repair) {
      std::cout << "`sheaf heap check --repair` rebuilds the heap from its blocks, dropping "
                   "what the damage took\n";
    } else {
      std::cout << "damage remains: other processes have the heap open (only the first to open "
                   "it repairs it); close them and run again\n";
    }
  }
  if (!report.ok()) throw CLI::RuntimeError(kExitFailure);
}

struct UpgradeArgs {
  std::string heap;
  bool json = false;
};

void heap_upgrade(const UpgradeArgs& args) {
  Heap heap = open_heap(args.heap);
  const std::uint32_t before = heap.info().format_version;
  const bool changed = heap.upgrade().value();
  const HeapInfo after = heap.info();
  if (args.json) {
    print_json({{"path", after.path},
                {"upgraded", changed},
                {"format_version_before", before},
                {"format_version", after.format_version},
                {"features", after.features}});
    return;
  }
  std::string features;
  for (const std::string& feature : after.features) {
    features += (features.empty() ? "" : ", ") + feature;
  }
  if (changed) {
    std::cout << "upgraded " << after.path << " from format " << before << " to "
              << after.format_version << " (features: " << features << ")\n";
  } else {
    std::cout << after.path << " is already at format " << after.format_version
              << " (features: " << features << ")\n";
  }
}

// --- Registration ------------------------------------------------------------------

// The heap argument every verb takes first.
void add_heap_argument(CLI::App& verb, std::string& heap) {
  verb.add_option("HEAP", heap, "The heap: a heap file's path, or STORE/NAME for a heap in a store")
      ->required()
      ->type_name("");
}

}  // namespace

void register_heap_commands(CLI::App& app) {
  CLI::App* heap = app.add_subcommand("heap", "Shared heaps in memory-mapped files");
  heap->require_subcommand(1);

  auto create = std::make_shared<CreateArgs>();
  CLI::App* verb = heap->add_subcommand("create", "Create a new heap file (never replaces a file)");
  add_heap_argument(*verb, create->heap);
  verb->add_option("--size", create->size,
                   "Initial size, e.g. 64M or 1.5G (default " + format_size(create->size) + ")")
      ->transform(size_value())
      ->type_name("SIZE");
  verb->add_option("--max-size", create->max_size,
                   "Growth limit (default: none but the address space reserved when mapped)")
      ->transform(size_value())
      ->type_name("SIZE");
  verb->add_option("--mode", create->mode,
                   "Locking: local (one host), network (several hosts), "
                   "or auto (by filesystem or $SHEAF_HEAP_MODE; the default)")
      ->check(CLI::IsMember({"local", "network", "auto"}))
      ->type_name("MODE");
  verb->callback([create] { heap_create(*create); });

  auto info = std::make_shared<InfoArgs>();
  verb = heap->add_subcommand("info", "Show a heap's size, usage and state");
  add_heap_argument(*verb, info->heap);
  add_json_flag(*verb, info->json);
  verb->callback([info] { heap_info(*info); });

  auto ls = std::make_shared<LsArgs>();
  verb = heap->add_subcommand("ls", "List the named objects, sorted by name");
  add_heap_argument(*verb, ls->heap);
  add_json_flag(*verb, ls->json);
  verb->add_flag("-1,--names", ls->names_only, "Print only the names, one a line");
  verb->callback([ls] { heap_ls(*ls); });

  auto put = std::make_shared<PutArgs>();
  verb = heap->add_subcommand("put", "Store a file's bytes (or stdin's) as a named byte array");
  add_heap_argument(*verb, put->heap);
  verb->add_option("NAME", put->name, "The object's name")->required()->type_name("");
  verb->add_option("FILE", put->file, "The file to read, or - for standard input")
      ->required()
      ->type_name("");
  verb->add_flag("-f,--force", put->force, "Replace an object of that name (of any type)");
  verb->callback([put] { heap_put(*put); });

  auto cat = std::make_shared<CatArgs>();
  verb = heap->add_subcommand("cat", "Write a named object's raw bytes to standard output");
  add_heap_argument(*verb, cat->heap);
  verb->add_option("NAME", cat->name, "The object's name")->required()->type_name("");
  verb->callback([cat] { heap_cat(*cat); });

  auto rm = std::make_shared<RmArgs>();
  verb = heap->add_subcommand("rm", "Free a named object (no destructor runs)");
  add_heap_argument(*verb, rm->heap);
  verb->add_option("NAME", rm->name, "The object's name")->required()->type_name("");
  verb->callback([rm] { heap_rm(*rm); });

  auto check = std::make_shared<CheckArgs>();
  verb = heap->add_subcommand("check",
                              "Verify a heap file's invariants, read-only (exit 1 on damage)");
  add_heap_argument(*verb, check->heap);
  add_json_flag(*verb, check->json);
  verb->add_flag("--repair", check->repair,
                 "Repair what is found: what a crash left, and damage (rebuilt from the "
                 "block chain; what the damage took is lost)");
  verb->callback([check] { heap_check(*check); });

  auto upgrade = std::make_shared<UpgradeArgs>();
  verb = heap->add_subcommand(
      "upgrade",
      "Bring a heap made by an older Sheaf to this Sheaf's format (no other process "
      "may have it open)");
  add_heap_argument(*verb, upgrade->heap);
  add_json_flag(*verb, upgrade->json);
  verb->callback([upgrade] { heap_upgrade(*upgrade); });
}

}  // namespace sheaf::cli
