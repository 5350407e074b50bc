// store_test.cpp: stores and databags.
#include <algorithm>

#include "heap_test_util.hpp"
#include "sheaf/store.hpp"

namespace sheaf {
namespace {

using testing::TempDir;

TEST(Store, InitOpenAndNames) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  EXPECT_TRUE(Store::is_store(dir / "s"));
  EXPECT_TRUE(Store::open(dir / "s").ok());
  EXPECT_FALSE(Store::open(dir.path()).ok());
  EXPECT_THROW(Store::check_name("../x"), Error);
  EXPECT_THROW(Store::check_name("a/b"), Error);
  EXPECT_NO_THROW(Store::check_name("model-1.v2_final"));
}

}  // namespace
}  // namespace sheaf
