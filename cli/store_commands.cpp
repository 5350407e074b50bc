#include "store_commands.hpp"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "bag_commands.hpp"
#include "output.hpp"
#include "sheaf/store.hpp"

namespace sheaf::cli {
namespace {

// --- The verbs ---------------------------------------------------------------------

struct InitArgs {
  std::string dir;
};

void store_init(const InitArgs& args) {
  const bool existed = Store::is_store(args.dir);
  const Store store = Store::init(args.dir).value();
  if (existed) {
    std::cout << store.path() << " is already a store\n";
  } else {
    std::cout << "created store " << store.path() << '\n';
  }
}

struct LsArgs {
  std::string store;
  bool json = false;
};

void store_ls(const LsArgs& args) {
  const Store store = Store::open(args.store).value();
  const std::vector<HeapEntry> heaps = store.heaps();
  const std::vector<BagEntry> bags = list_bags(store);
  if (args.json) {
    Json heap_list = Json::array();
    for (const HeapEntry& heap : heaps) {
      heap_list.push_back({{"name", heap.name}, {"size", heap.file_size}});
    }
    Json bag_list = Json::array();
    for (const BagEntry& bag : bags) bag_list.push_back(bag_entry_json(bag));
    print_json({{"path", store.path()}, {"heaps", heap_list}, {"bags", bag_list}});
    return;
  }
  // Two tables, heaps then bags, a blank line between; an empty one is left out.
  if (!heaps.empty()) {
    std::vector<std::vector<std::string>> rows = {{"HEAP", "SIZE"}};
    for (const HeapEntry& heap : heaps) rows.push_back({heap.name, std::to_string(heap.file_size)});
    print_table(rows, {false, true});
  }
  if (!heaps.empty() && !bags.empty()) std::cout << '\n';
  print_bag_table(bags, "BAG");
}

}  // namespace

// --- Registration ------------------------------------------------------------------

void register_store_commands(CLI::App& app) {
  CLI::App* store = app.add_subcommand("store", "Stores: directories of heaps and bags");
  store->require_subcommand(1);

  auto init = std::make_shared<InitArgs>();
  CLI::App* verb = store->add_subcommand(
      "init", "Make DIR a store (creating it if needed; an existing store is left as it is)");
  verb->add_option("DIR", init->dir, "The directory")->required()->type_name("");
  verb->callback([init] { store_init(*init); });

  auto ls = std::make_shared<LsArgs>();
  verb = store->add_subcommand("ls", "List a store's heaps and bags, with their sizes");
  verb->add_option("STORE", ls->store, "The store directory")->required()->type_name("");
  add_json_flag(*verb, ls->json);
  verb->callback([ls] { store_ls(*ls); });
}

}  // namespace sheaf::cli
