// CUDA on the CPU, only so far as gpubp's kernels need it: a test harness, so
// that kernels/*.cu run against their NumPy definitions without a GPU.
//
// A launch runs the grid's blocks one after another. Each CUDA thread of a
// block is a fiber (ucontext) with a stack of its own, and a block's fibers
// take turns on one OS thread: a fiber runs until it waits at a barrier
// (__syncthreads over the block; a warp shuffle's exchange over its warp) or
// ends, and a barrier lets its fibers go on once every one it waits for has
// arrived. __shared__ variables become statics, which the (one running) block
// shares, filled with 0xFF bytes whenever a new block starts. A barrier that some fiber never reaches (a shuffle or __syncthreads
// under divergent control flow, undefined in CUDA) is reported, not hung on.
//
// Arguments arrive as CUDA's kernelParams do: an array of pointers to each
// argument's value, read as the kernel's declared parameter types, so a scalar
// passed with the wrong C type is read as the wrong bytes here as on a GPU.
//
// A memory access that faults while a kernel runs (the test harness puts a
// page the process may not touch next to each array it hands a kernel, so an
// access past either end faults) ends the launch with an error naming the
// address, instead of crashing the process.
//
// Not emulated: the host math library is not CUDA's (results differ in the
// last ulps), threads never truly run at once (no data races are found), and
// nothing is timed.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline dim3 gridDim, blockDim, blockIdx, threadIdx;

struct EmuBarrier {
    int n = 0, arrived = 0;
    long generation = 0;
};

struct EmuFiber {
    static constexpr std::size_t kStack = 64 * 1024;
    ucontext_t context;
    std::unique_ptr<char[]> stack{new char[kStack]};    // not zeroed: made once, kept
    EmuBarrier* waiting = nullptr;
    long waiting_generation = 0;
    bool done = false;
};

inline ucontext_t emu_scheduler;
inline EmuFiber* emu_fiber = nullptr;            // the fiber running now
inline int emu_lane = 0, emu_warp_index = 0;
inline EmuBarrier emu_block_barrier;
inline std::vector<EmuBarrier> emu_warp_barriers;
inline unsigned char emu_warp_values[32][32][8];  // [warp][lane]: a shuffle's exchange
inline std::function<void()> emu_body;
inline long emu_block_serial = 0;                // which block runs: shared memory is new in each

// Shared memory is garbage when a block starts; here every byte is 0xFF (a NaN
// in floating point) at the first declaration a block reaches, so a read
// before the block's own write shows. _cuda_emulator.py puts a call after
// each __shared__ declaration.
template <typename T>
void emu_fresh_shared(T& array, long& block_seen) {
    if (block_seen != emu_block_serial) {
        std::memset(&array, 0xFF, sizeof array);
        block_seen = emu_block_serial;
    }
}
inline bool emu_bad_mask = false;

inline void emu_wait(EmuBarrier& barrier) {
    const long generation = barrier.generation;
    if (++barrier.arrived == barrier.n) {        // the last to arrive releases the others
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    emu_fiber->waiting = &barrier;
    emu_fiber->waiting_generation = generation;
    swapcontext(&emu_fiber->context, &emu_scheduler);
}

inline void __syncthreads() { emu_wait(emu_block_barrier); }

template <typename T>
T emu_shuffle(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    if (mask != 0xffffffffu) emu_bad_mask = true;       // gpubp's kernels shuffle whole warps
    const int warp = emu_warp_index;
    std::memcpy(emu_warp_values[warp][emu_lane], &v, sizeof(T));
    emu_wait(emu_warp_barriers[warp]);
    T out;
    std::memcpy(&out, emu_warp_values[warp][src_lane], sizeof(T));
    emu_wait(emu_warp_barriers[warp]);                    // nobody writes before all have read
    return out;
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu_shuffle(mask, v, (emu_lane ^ lane_mask) & 31);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
    const int src = emu_lane + (int)delta;
    return emu_shuffle(mask, v, src < 32 ? src : emu_lane);
}

// CUDA's adds rounded on their own, never contracted into a multiply-add: the host's
// plain adds (x86-64's baseline has no FMA for the compiler to contract into).
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }

inline double atomicAdd(double* address, double v) {
    const double old = *address;                       // one fiber runs at a time
    *address = old + v;
    return old;
}

inline void emu_fiber_main() {
    emu_body();
    emu_fiber->done = true;                            // then back to the scheduler (uc_link)
}

template <typename... A, std::size_t... I>
void emu_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

inline std::mutex emu_launch_mutex;

// A fault inside a kernel jumps back to its launch (the fibers it abandons are
// made anew by the next launch). emu_fault_address and emu_fault_was_write say
// what faulted.
inline sigjmp_buf emu_fault_jump;
inline void* emu_fault_address = nullptr;
inline int emu_fault_was_write = -1;                  // -1: not known

inline void emu_on_fault(int, siginfo_t* info, void* context) {
    emu_fault_address = info->si_addr;
#if defined(__x86_64__) && defined(REG_ERR)
    emu_fault_was_write = (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#else
    (void)context;
#endif
    siglongjmp(emu_fault_jump, 1);
}

// Catches SIGSEGV and SIGBUS (on a stack of its own) for as long as it lives,
// then puts back whatever handled them before (Python's faulthandler, say).
struct EmuFaultTrap {
    struct sigaction old_segv {}, old_bus {};
    stack_t old_stack{};
    EmuFaultTrap() {
        static std::vector<char> alternate(256 * 1024);
        stack_t stack{};
        stack.ss_sp = alternate.data();
        stack.ss_size = alternate.size();
        sigaltstack(&stack, &old_stack);
        struct sigaction action {};
        action.sa_sigaction = emu_on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &old_segv);
        sigaction(SIGBUS, &action, &old_bus);
    }
    ~EmuFaultTrap() {
        sigaction(SIGSEGV, &old_segv, nullptr);
        sigaction(SIGBUS, &old_bus, nullptr);
        sigaltstack(&old_stack, nullptr);
    }
};

// The kernel's parameters, for the caller to check its arguments against:
// returns their number and writes each one's size and kind (0 pointer,
// 1 integer, 2 floating point) into sizes and kinds.
template <typename... A>
int emu_signature(void (*)(A...), int* sizes, int* kinds) {
    int i = 0;
    ((sizes[i] = (int)sizeof(A),
      kinds[i] = std::is_pointer_v<A> ? 0 : std::is_integral_v<A> ? 1 : 2, ++i), ...);
    return (int)sizeof...(A);
}

// Runs kernel<<<grid, block>>>(args); returns 0, or 1 if some barrier was
// never reached by all it waits for, 2 if a shuffle named fewer than all lanes,
// 3 if a memory access faulted (emu_fault_address).
// Between barriers the threads of a block take turns in the order of their
// index, or the reverse with reverse_order set: a race that one order hides
// (a read before the write it needs) the other shows.
template <typename... A>
int emu_launch(void (*kernel)(A...), dim3 grid, dim3 block, void** args, int reverse_order) {
    std::lock_guard<std::mutex> lock(emu_launch_mutex);
    const int n = (int)(block.x * block.y * block.z);
    if (n > 1024) return 1;
    EmuFaultTrap trap;
    emu_fault_address = nullptr;
    emu_fault_was_write = -1;
    if (sigsetjmp(emu_fault_jump, 1) != 0) return 3;
    gridDim = grid;
    blockDim = block;
    emu_bad_mask = false;
    emu_body = [&] { emu_call(kernel, args, std::index_sequence_for<A...>{}); };
    static std::vector<EmuFiber> fibers;                 // kept from launch to launch
    if ((int)fibers.size() < n) fibers.resize(n);
    const int n_warps = (n + 31) / 32;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                ++emu_block_serial;
                emu_block_barrier = EmuBarrier{n};
                emu_warp_barriers.assign(n_warps, EmuBarrier{});
                for (int w = 0; w < n_warps; ++w) emu_warp_barriers[w].n = std::min(32, n - 32 * w);
                for (int t = 0; t < n; ++t) {
                    EmuFiber& f = fibers[t];
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.get();
                    f.context.uc_stack.ss_size = EmuFiber::kStack;
                    f.context.uc_link = &emu_scheduler;
                    makecontext(&f.context, emu_fiber_main, 0);
                    f.done = false;
                    f.waiting = nullptr;
                }
                int finished = 0;
                while (finished < n) {
                    bool progress = false;
                    for (int turn = 0; turn < n; ++turn) {
                        const int t = reverse_order ? n - 1 - turn : turn;
                        EmuFiber& f = fibers[t];
                        if (f.done) continue;
                        if (f.waiting != nullptr && f.waiting->generation == f.waiting_generation) continue;
                        f.waiting = nullptr;
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        emu_lane = t % 32;
                        emu_warp_index = t / 32;
                        emu_fiber = &f;
                        swapcontext(&emu_scheduler, &f.context);
                        progress = true;
                        if (f.done) ++finished;
                    }
                    if (!progress) return 1;           // everyone left waits: a barrier never fills
                }
            }
    return emu_bad_mask ? 2 : 0;
}
