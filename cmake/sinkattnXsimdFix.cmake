# Debian 12's xsimd 8.1 package was built with XSIMD_ENABLE_XTL_COMPLEX: its exported target
# lists "xtl" in INTERFACE_LINK_LIBRARIES, but its config never finds xtl. Without an `xtl`
# target that name becomes `-lxtl` at link time and every program fails to link. sinkattn uses
# no xtl, so when xtl cannot be found we drop the dangling name. An engine that does use xtl
# finds it (find_package(xtl)) and keeps the link untouched.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_sinkattn_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_sinkattn_xsimd_libs AND "xtl" IN_LIST _sinkattn_xsimd_libs)
    find_package(xtl QUIET)
    if(NOT TARGET xtl)
      list(REMOVE_ITEM _sinkattn_xsimd_libs xtl)
      set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "${_sinkattn_xsimd_libs}")
    endif()
  endif()
  unset(_sinkattn_xsimd_libs)
endif()
