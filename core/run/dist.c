/* dist.c — MPI behind base/comm.h (dist.h). Everything MPI is under #ifdef ML_MPI. */
#include "run/dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/common.h"

#ifdef ML_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_local = 1;

/* The job size an MPI launcher announces in the environment, or 0. */
static int launcher_size(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v) > 0 ? atoi(v) : 1;
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

int ml_dist_launched_size(void) { return launcher_size(); }

int ml_dist_launched_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int ml_dist_built(void) {
#ifdef ML_MPI
    return 1;
#else
    return 0;
#endif
}

int ml_dist_rank(void) { return g_rank; }
int ml_dist_size(void) { return g_size; }
int ml_dist_local_size(void) { return g_local; }

#ifdef ML_MPI

static int g_started = 0;

/* MPI counts are ints: large buffers go in pieces. */
#define CHUNK ((size_t)1 << 30)

static int mpi_fail(const char *what, int rc) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
    return ml_errorf("mpi: %s failed on rank %d of %d: %s", what, g_rank, g_size, s);
}

static int sum_floats(float *x, size_t n) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail("allreduce of the gradients", rc);
    }
    return ML_OK;
}

static int sum_doubles(double *x, size_t n) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, x + i, k, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail("allreduce", rc);
    }
    return ML_OK;
}

static int max_int(int *x) {
    int rc = MPI_Allreduce(MPI_IN_PLACE, x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? ML_OK : mpi_fail("allreduce (max)", rc);
}

static int gather_rows(const float *mine, float *all, int B, int width) {
    if ((int64_t)B * width > INT_MAX)
        return ml_errorf("mpi: gathering %d rows of %d floats: more than 2^31-1 floats", B, width);
    int counts[g_size], displs[g_size];
    for (int r = 0; r < g_size; r++) {
        displs[r] = ml_part_off(B, g_size, r) * width;
        counts[r] = ml_part_off(B, g_size, r + 1) * width - displs[r];
    }
    /* MPI_IN_PLACE: this rank's rows are already where they belong when mine points there */
    const void *src = mine == all + displs[g_rank] ? MPI_IN_PLACE : mine;
    int rc = MPI_Allgatherv(src, counts[g_rank], MPI_FLOAT, all, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? ML_OK : mpi_fail("allgather of the router inputs", rc);
}

static ml_comm g_comm = {0, 1, sum_floats, sum_doubles, max_int, gather_rows};

int ml_dist_init(int *argc, char ***argv) {
    if (g_started || launcher_size() == 0) return ML_OK;
    /* OpenMPI polls while a rank waits in a collective: on a busy machine the polling rank
       holds the core the late one needs (the demo's 2 ranks ran 2-5x slower beside other
       work, docs/PERFORMANCE.md). Yield instead, as moelab's threads wait passively
       (core/main.c), unless the user's own OMPI_MCA_mpi_yield_when_idle says otherwise. */
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
    int provided = 0;
    /* only the thread that called MPI_Init calls MPI: OpenMP threads compute, never talk */
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return ml_errorf("mpi: MPI_Init_thread failed (error %d)", rc);
    g_started = 1;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_comm.rank = g_rank;
    g_comm.size = g_size;
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &g_local);
        MPI_Comm_free(&node);
    }
    return ML_OK;
}

void ml_dist_finalize(void) {
    if (!g_started) return;
    MPI_Finalize();
    g_started = 0;
}

void ml_dist_abort(int code) {
    if (g_started && g_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

const ml_comm *ml_dist_comm(void) { return g_size > 1 ? &g_comm : NULL; }

int ml_dist_barrier(void) {
    if (!g_started || g_size < 2) return ML_OK;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? ML_OK : mpi_fail("barrier", rc);
}

#else /* built without MPI: one rank */

int ml_dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    int n = launcher_size();
    if (n > 1)
        return ml_errorf("mpi: started by an MPI launcher as one of %d processes, but this moelab was built "
                         "without MPI; hint: install libopenmpi-dev (tools/install-deps.sh) and rebuild", n);
    return ML_OK;
}

void ml_dist_finalize(void) {}
void ml_dist_abort(int code) { (void)code; }
const ml_comm *ml_dist_comm(void) { return NULL; }
int ml_dist_barrier(void) { return ML_OK; }

#endif
