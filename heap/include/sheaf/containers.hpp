// sheaf/containers.hpp: STL-style containers that live inside a heap.
//
// sheaf::Allocator<T> allocates from a Heap and hands out
// boost::interprocess::offset_ptr pointers, so a container built with it can
// be reached from every process that maps the heap, whatever address the heap
// has there. Boost.Container's containers understand such pointers:
//
//   using Names = sheaf::vector<sheaf::string>;
//   auto* names = heap.construct<Names>("names")(heap);   // Heap& converts to the allocator
//   heap.exclusive([&] { names->emplace_back("alice", heap); });
//
// A container is not itself synchronised: modify it inside heap.exclusive()
// (or under a lock of your own) when other processes may use it too.
//
// This header pulls in Boost.Container; include it only where containers are
// used, not from other headers.
#pragma once

#include <boost/container/map.hpp>
#include <boost/container/string.hpp>
#include <boost/container/vector.hpp>
#include <boost/interprocess/offset_ptr.hpp>
#include <cstddef>
#include <functional>

#include "sheaf/heap.hpp"

namespace sheaf {

template <class T>
using offset_ptr = boost::interprocess::offset_ptr<T>;

namespace detail {
// The allocator lives inside the heap, so it cannot hold this process's Heap
// object; it holds the heap's base address as an offset pointer, and these
// find the process's open heap at that base.
void* allocate_at_base(const void* base, std::size_t bytes, std::size_t alignment);
void deallocate_at_base(const void* base, void* p);
}  // namespace detail

template <class T>
class Allocator {
 public:
  using value_type = T;
  using pointer = offset_ptr<T>;
  using const_pointer = offset_ptr<const T>;
  using void_pointer = offset_ptr<void>;
  using const_void_pointer = offset_ptr<const void>;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  template <class U>
  struct rebind {
    using other = Allocator<U>;
  };

  Allocator(Heap& heap) noexcept : base_(heap.base()) {}  // NOLINT: converts on purpose
  template <class U>
  Allocator(const Allocator<U>& other) noexcept : base_(other.base()) {}

  pointer allocate(size_type n) {
    return pointer(static_cast<T*>(detail::allocate_at_base(base(), n * sizeof(T), alignof(T))));
  }
  void deallocate(pointer p, size_type) noexcept {
    detail::deallocate_at_base(base(), boost::interprocess::ipcdetail::to_raw_pointer(p));
  }
  void* base() const noexcept { return base_.get(); }

  friend bool operator==(const Allocator& a, const Allocator& b) noexcept {
    return a.base() == b.base();
  }
  friend bool operator!=(const Allocator& a, const Allocator& b) noexcept { return !(a == b); }

 private:
  offset_ptr<void> base_;
};

template <class T>
using vector = boost::container::vector<T, Allocator<T>>;
using string = boost::container::basic_string<char, std::char_traits<char>, Allocator<char>>;
template <class K, class V, class Compare = std::less<K>>
using map = boost::container::map<K, V, Compare, Allocator<std::pair<const K, V>>>;

}  // namespace sheaf
