# ctest step: install sinkattn from its source tree into a fresh prefix, as a packager would.
# A fresh configure with tests/bench/examples OFF also checks that a plain install needs
# nothing but xsimd. Inputs: SOURCE_DIR, WORK_DIR, PREFIX, GENERATOR, CXX_COMPILER.
foreach(var SOURCE_DIR WORK_DIR PREFIX GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_package.cmake: ${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK_DIR}" "${PREFIX}")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}" -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_INSTALL_PREFIX=${PREFIX}" -DSINKATTN_BUILD_TESTS=OFF
    -DSINKATTN_BUILD_BENCH=OFF -DSINKATTN_BUILD_EXAMPLES=OFF)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}")
run("${CMAKE_COMMAND}" --install "${WORK_DIR}")

foreach(f include/sinkattn/sinkattn.hpp include/sinkattn/eigen.hpp)
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "not installed: ${PREFIX}/${f}")
  endif()
endforeach()
file(GLOB_RECURSE configs "${PREFIX}/*/sinkattnConfig.cmake")
if(NOT configs)
  message(FATAL_ERROR "no sinkattnConfig.cmake under ${PREFIX}")
endif()
message(STATUS "installed sinkattn into ${PREFIX} (${configs})")
