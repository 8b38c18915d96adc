# One helper per kind of target, so each folder's CMakeLists.txt stays a few lines.

set(ESS_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter
    -Wno-missing-field-initializers)  # designated initializers leave defaults on purpose

# ess_library(NAME SRCS ... DEPS ...): a static library with the project include root.
function(ess_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SRCS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(${name} PRIVATE ${ESS_WARNINGS})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

# ess_binary(NAME SRCS ... DEPS ...): an executable installed into the build's bin/.
function(ess_binary name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${ESS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

# ess_service(NAME SRCS ... DEPS ...): an ess_binary that runs on the malloc chosen by
# ESS_MALLOC, linked even where nothing names it (--no-as-needed). The C library comes last on
# every link line, so the dynamic linker finds the allocator's malloc first, for every library
# of the process.
function(ess_service name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  ess_binary(${name} SRCS ${ARG_SRCS} DEPS ${ARG_DEPS})
  if(ESS_MALLOC STREQUAL "jemalloc")
    target_link_options(${name} PRIVATE "LINKER:--no-as-needed")
    target_link_libraries(${name} PRIVATE PkgConfig::JEMALLOC)
  endif()
endfunction()

# ess_test(NAME SRCS ... DEPS ... [LABELS ...] [TIMEOUT s]): a GoogleTest binary registered
# with ctest. Unit tests get the label "unit"; tests needing real servers pass LABELS integration.
function(ess_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${ESS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  # An idle gRPC client notices a server's GOAWAY only at its next backup poll (5 s by default),
  # and a graceful replay_svc shutdown waits for that: poll often in tests.
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "ESS_BIN_DIR=${PROJECT_BINARY_DIR}/bin;ESS_SOURCE_DIR=${PROJECT_SOURCE_DIR};GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=100")
endfunction()
