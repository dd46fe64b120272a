// shim.cpp - registers the C micro workloads of micro.c with google-benchmark.  This is
// the only C++ in the suite: the workloads stay plain C so they call the allocator
// exactly like a C program would, and this file only names and parameterises them.
#include <benchmark/benchmark.h>

#include <string>

#include "micro.h"

namespace {

// Each workload returns the allocation calls it made; reported as items/s.
template <typename F>
void Run(benchmark::State &state, F body)
{
    size_t items = 0;
    for (auto _ : state)
        items += body();
    state.SetItemsProcessed(static_cast<int64_t>(items));
}

void RegisterAll()
{
    // Fixed sizes across the tiers: tiny, small, page, medium, above-medium, huge.
    const size_t fixed[] = {16, 64, 512, 4096, 32 * 1024, 100 * 1024, 1024 * 1024};
    for (size_t size : fixed)
        benchmark::RegisterBenchmark(("malloc_free/" + std::to_string(size)).c_str(),
                                     [size](benchmark::State &st) {
                                         Run(st, [size] { return mb_malloc_free(size); });
                                     });

    const struct { const char *name; mb_order order; } orders[] = {
        {"lifo", MB_LIFO}, {"fifo", MB_FIFO}, {"random", MB_RANDOM}};
    for (auto o : orders)
        for (size_t size : {size_t(16), size_t(256)}) {
            mb_order order = o.order;
            benchmark::RegisterBenchmark(
                ("batch_" + std::string(o.name) + "/" + std::to_string(size) + "x1000").c_str(),
                [size, order](benchmark::State &st) {
                    Run(st, [size, order] { return mb_batch(size, 1000, order); });
                });
        }

    for (size_t size : {size_t(64), size_t(4096), size_t(1024 * 1024)})
        benchmark::RegisterBenchmark(("calloc/" + std::to_string(size)).c_str(),
                                     [size](benchmark::State &st) {
                                         Run(st, [size] { return mb_calloc(size); });
                                     });

    // String building: 8-byte appends up to 4 KiB and 64-byte appends up to 256 KiB.
    const struct { size_t step, len; } grow[] = {{8, 4096}, {64, 256 * 1024}};
    for (auto g : grow) {
        size_t step = g.step, len = g.len;
        benchmark::RegisterBenchmark(
            ("realloc_grow/" + std::to_string(step) + "to" + std::to_string(len)).c_str(),
            [step, len](benchmark::State &st) {
                Run(st, [step, len] { return mb_realloc_grow(step, len); });
            });
    }

    const struct { size_t align, size; } aligned[] = {{64, 64}, {64, 1000}, {4096, 4096}};
    for (auto a : aligned) {
        size_t align = a.align, size = a.size;
        benchmark::RegisterBenchmark(
            ("aligned_alloc/" + std::to_string(align) + "/" + std::to_string(size)).c_str(),
            [align, size](benchmark::State &st) {
                Run(st, [align, size] { return mb_aligned(align, size); });
            });
    }

    for (size_t size : {size_t(64), size_t(1024)})
        benchmark::RegisterBenchmark(("xthread_free/" + std::to_string(size)).c_str(),
                                     [size](benchmark::State &st) {
                                         Run(st, [size] { return mb_xthread(size, 256); });
                                         mb_xthread_stop();
                                     })
            ->UseRealTime();   // the consumer's work happens on another thread
}

}  // namespace

int main(int argc, char **argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    RegisterAll();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
