/*
 * bench.h — `moelab bench`: times forward + backward + Adam steps of the SRNN model of
 * ../shared/bench/torch_srnn_ref.py on random data and prints exactly one line:
 *   srnn_step image=HxWxC batch=B experts=E threads=T img_per_s=X ms_per_step=Y gflops=Z
 *             sgemm_peak_gflops=P peak_rss_mb=M
 */
#ifndef MOELAB_BENCH_H
#define MOELAB_BENCH_H

/* argv without the command name; returns the process exit status */
int ml_bench_main(int argc, char **argv);

#endif
