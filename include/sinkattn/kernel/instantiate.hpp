#pragma once
// Compiling the kernels once per program (optional).
//
// The runtime entry point forward() picks one of 7 masks x 6 normalizations at run time, so
// every translation unit that calls it compiles all 42 specialisations of the fused loop
// (about 45 s of g++ -O3 each). A program with many such files (a test suite, an engine with
// several attention call sites) can compile them in one place instead:
//
//   - every file that calls forward() is compiled with SINKATTN_EXTERN_KERNELS defined
//     (e.g. target_compile_definitions): forward() then only declares the specialisations
//     (explicit instantiation declarations), and the compiler emits calls to them;
//   - one .cpp, or several to compile in parallel, defines them:
//
//         #include <sinkattn/kernel/instantiate.hpp>
//         SINKATTN_INSTANTIATE_KERNELS(sinkattn::policy::CausalMaskPolicy)   // one mask
//         SINKATTN_INSTANTIATE_ALL_KERNELS()                                 // or all 7
//
// All of these files must be compiled with the same ISA flags (-march), since the kernels are
// compiled for one ISA. The compile-time entry point forward<Variant<...>>() is unaffected.
// Without SINKATTN_EXTERN_KERNELS nothing changes: the library stays header-only.

#include "sinkattn/kernel/forward.hpp"

// The mask policies forward() dispatches to (detail::dispatch_mask): X(policy type). Our
// build generates one file per entry from SINKATTN_KERNEL_MASKS in CMakeLists.txt: keep the
// two lists equal (a mask added to dispatch_mask but not here is still compiled, per file).
#define SINKATTN_FOR_EACH_KERNEL_MASK(X)         \
  X(::sinkattn::policy::FullMaskPolicy)          \
  X(::sinkattn::policy::CausalMaskPolicy)        \
  X(::sinkattn::policy::SlidingWindowMaskPolicy) \
  X(::sinkattn::policy::BlockMaskPolicy)         \
  X(::sinkattn::policy::BlockSparseMaskPolicy)   \
  X(::sinkattn::policy::NeighborhoodMaskPolicy)  \
  X(::sinkattn::policy::NeighborhoodTiledMaskPolicy)

// The 6 specialisations of one mask (one per normalization: detail::dispatch_norm).
#define SINKATTN_INSTANTIATE_KERNELS(Mask)                           \
  template ::sinkattn::Status sinkattn::detail::dispatch_norm<Mask>( \
      const ::sinkattn::detail::KernelArgs&, const ::sinkattn::Options&, const Mask&, const ::sinkattn::Executor&);
#define SINKATTN_INSTANTIATE_ALL_KERNELS() SINKATTN_FOR_EACH_KERNEL_MASK(SINKATTN_INSTANTIATE_KERNELS)

#ifdef SINKATTN_EXTERN_KERNELS
#define SINKATTN_DETAIL_DECLARE_KERNELS(Mask) extern SINKATTN_INSTANTIATE_KERNELS(Mask)
SINKATTN_FOR_EACH_KERNEL_MASK(SINKATTN_DETAIL_DECLARE_KERNELS)
#undef SINKATTN_DETAIL_DECLARE_KERNELS
#endif
