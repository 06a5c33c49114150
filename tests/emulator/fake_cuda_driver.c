/* A stand-in for the CUDA driver's graph instantiation on the CPU, for
 * tests/test_graphs.py.
 *
 * It is compiled against the CUDA toolkit's own cuda.h, so the compiler holds
 * each function below to the driver's prototype (cuda.h names the symbol
 * cuGraphInstantiateWithFlags: its cuGraphInstantiate is a macro for it), and
 * gpubp.graphs calls it through the ctypes signatures it declares for the real
 * driver. cuGraphInstantiateWithFlags checks its arguments as cuda.h documents
 * them, records the graph and the flags, and hands out a new executable-graph
 * handle; the fake_cuda_* functions tell the tests what it was called with.
 */
#include <stdint.h>
#include <string.h>

#include <cuda.h>

static CUgraph last_graph;
static unsigned long long last_flags;
static int instantiations;
static uintptr_t next_exec = 0x5000;

CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec* phGraphExec, CUgraph hGraph,
                                             unsigned long long flags) {
    const unsigned long long known = CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH |
                                     CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH |
                                     CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY;
    if (phGraphExec == NULL || hGraph == NULL || (flags & ~known) != 0) return CUDA_ERROR_INVALID_VALUE;
    last_graph = hGraph;
    last_flags = flags;
    instantiations++;
    next_exec += 0x10;
    *phGraphExec = (CUgraphExec)next_exec;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** pStr) {
    if (pStr == NULL) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
        case CUDA_SUCCESS: *pStr = "no error"; return CUDA_SUCCESS;
        case CUDA_ERROR_INVALID_VALUE: *pStr = "invalid argument"; return CUDA_SUCCESS;
        default: *pStr = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
}

const void* fake_cuda_last_graph(void) { return last_graph; }
unsigned long long fake_cuda_last_flags(void) { return last_flags; }
int fake_cuda_instantiations(void) { return instantiations; }

/* The header's values of the constants gpubp/graphs.py writes out by hand. */
long long fake_cuda_constant(const char* name) {
    if (strcmp(name, "USE_NODE_PRIORITY") == 0) return CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY;
    return -999999;
}
