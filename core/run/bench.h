/*
 * bench.h — `moelab bench`: times training steps (forward, losses, backward, Adam) on
 * random data and prints exactly one line, the same work as the model's PyTorch peer.
 *   --model srnn (default): the SRNN model of ../shared/bench/torch_srnn_ref.py
 *     srnn_step image=HxWxC batch=B experts=E threads=T img_per_s=X ms_per_step=Y gflops=Z
 *               sgemm_peak_gflops=P peak_rss_mb=M
 *   --model cod: the camouflage segmentation model (model.type cod) of bench/torch_cod_ref.py
 *     cod_step image=HxWxC batch=B experts=E top_k=K threads=T img_per_s=X ms_per_step=Y
 *              gflops=Z peak_rss_mb=M
 */
#ifndef MOELAB_BENCH_H
#define MOELAB_BENCH_H

/* argv without the command name; returns the process exit status */
int ml_bench_main(int argc, char **argv);

#endif
