/* What else is running on this process's CPUs, read from /proc (Linux). */
#ifndef ML_CPULOAD_H
#define ML_CPULOAD_H

/* The number of other processes' threads that are runnable (state R) on a CPU this process
   may run on (its affinity mask), the least of `looks` looks `gap_ms` apart, so that a
   process that only passes by is not load; processes whose parent is `skip_ppid` (> 0) are
   not counted (the sibling ranks an MPI launcher started). -1 when /proc cannot tell. */
int ml_cpu_others_running(int looks, int gap_ms, long skip_ppid);

#endif
