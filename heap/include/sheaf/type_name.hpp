// sheaf/type_name.hpp: the names under which named objects record their type.
//
// A named object remembers the name, size and alignment of the type it was
// constructed as, and find<T>() refuses to hand it out as anything else. The
// name must be the same in every program that maps the heap, so fundamental
// types have fixed names here, and other types take their name from the
// compiler unless the program gives one with SHEAF_TYPE_NAME(Type, "name"),
// which is what a type shared between programs built by different compilers
// should do. Use the macro at global scope, after the type is declared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sheaf {

template <class T>
struct TypeName {
  // The compiler's spelling of T, cut out of the function signature.
  static constexpr std::string_view value() {
    std::string_view f = __PRETTY_FUNCTION__;
    auto begin = f.find("T = ") + 4;
    auto end = f.find_first_of(";]", begin);
    return f.substr(begin, end - begin);
  }
};

#define SHEAF_TYPE_NAME(Type, Name)                            \
  template <>                                                  \
  struct sheaf::TypeName<Type> {                               \
    static constexpr std::string_view value() { return Name; } \
  }

template <class T>
constexpr std::string_view type_name() {
  return TypeName<T>::value();
}

// What a named object records about its type.
struct TypeTag {
  std::string_view name;
  std::size_t size;
  std::size_t alignment;
};

template <class T>
constexpr TypeTag type_tag() {
  return TypeTag{type_name<T>(), sizeof(T), alignof(T)};
}

}  // namespace sheaf

SHEAF_TYPE_NAME(char, "char");
SHEAF_TYPE_NAME(bool, "bool");
SHEAF_TYPE_NAME(std::byte, "byte");
SHEAF_TYPE_NAME(std::int8_t, "int8");
SHEAF_TYPE_NAME(std::uint8_t, "uint8");
SHEAF_TYPE_NAME(std::int16_t, "int16");
SHEAF_TYPE_NAME(std::uint16_t, "uint16");
SHEAF_TYPE_NAME(std::int32_t, "int32");
SHEAF_TYPE_NAME(std::uint32_t, "uint32");
SHEAF_TYPE_NAME(std::int64_t, "int64");
SHEAF_TYPE_NAME(std::uint64_t, "uint64");
SHEAF_TYPE_NAME(float, "float32");
SHEAF_TYPE_NAME(double, "float64");
