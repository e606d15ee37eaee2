#pragma once
// sinkattn: fast CPU attention kernels with sink-aware variants. The single entry header.

#include "sinkattn/cache/streaming_cache.hpp"
#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/kernel/act.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/sink_mass.hpp"
#include "sinkattn/version.hpp"
