/* conv.c — conv2d and transposed conv2d as chunked im2col/col2im + cblas_sgemm, direct
 * loops, and a Winograd form for the 4x4 stride-2 transposed conv (its GEMMs nn/ppgemm.c). */
#include "nn/conv.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "base/common.h"
#include "nn/ppgemm.h"
#include "nn/vec16.h"

/* Target size of one chunk's column matrix: big enough that the GEMM's N dimension is
 * thousands wide, small enough that col stays in the L3 cache between the GEMM that
 * writes it and the col2im that reads it. */
#ifndef COL_TARGET_FLOATS
#define COL_TARGET_FLOATS ((size_t)1 << 20)
#endif
/* The same for the Winograd transposed conv's V and M (16 GEMMs per chunk, over its tiles) */
#ifndef WG_TARGET_FLOATS
#define WG_TARGET_FLOATS ((size_t)1 << 18)
#endif
/* and the fewest tiles per chunk for images of under 64 tiles (8 x 8: 9, 16 x 16: 36): three
 * of ml_pp_gemm's 48-column blocks (nn/ppgemm.h), where its GEMMs run at 185 GFLOP/s against
 * 143 at 36 columns (bench/ppgemm_bench.c); docs/PERFORMANCE.md, "The Winograd GEMMs on
 * their own kernel" */
#ifndef WG_MIN_TILES
#define WG_MIN_TILES 144
#endif
/* Direct (GEMM-free) conv2d: stride 1, fewer output channels than this, rows this wide. */
#define DIRECT_MAX_O 16
/* the direct forward alone (shape.direct 2): up to this many output channels */
#define DIRECT_FWD_MAX_O 64
#define DIRECT_MAX_W 1024
#define DIRECT_MAX_K 16
/* register block of the direct kernel: DIRECT_OB output channels x DIRECT_NV 16-float vectors */
#define DIRECT_OB 3
#define DIRECT_NV 4
/* the same kernel's channel block when it has more output channels than DIRECT_OB (conv2d's
 * dx): DIRECT_DXB x DIRECT_NV accumulators + DIRECT_NV inputs fit the 32 AVX-512 registers */
#ifndef DIRECT_DXB
#define DIRECT_DXB 6
#endif
/* rows at most 32 or 16 floats wide (the COD experts' 32x32 and 16x16 maps) run on 2 or 1
 * vectors: DIRECT_NV would leave half or more of every accumulator idle. With fewer vectors
 * per channel, a block of DIRECT_OB32 or DIRECT_OB16 channels keeps the FMAs per load (a
 * block of DIRECT_OB when there are at most DIRECT_OB output channels). */
#define DIRECT_OB32 8
#define DIRECT_OB16 16
#define DIRECT_OB_MAX 16 /* >= DIRECT_OB, DIRECT_DXB, DIRECT_OB32, DIRECT_OB16 */
/* float partial sums per reduction: vectorisable without reassociation */
#define LANES 16
/* bound on the floats of the padded input rows one output row needs (C k rows): the direct
 * path is for layers with few channels */
#define DIRECT_MAX_ROWS 32768

/* Threads: OpenBLAS is the OpenMP build, so its GEMMs and the loops below share one
 * libgomp thread pool. Every loop that moves data is an OpenMP loop with a static schedule
 * over independent outputs (images, channels, rows); reductions keep a fixed order, so the
 * results are bitwise identical for the same thread count. */

/* ------------------------------------------------------------------------------------ */
/* shapes */

/* Rows of the column matrix and its columns per image. */
static size_t col_rows(const ml_conv_shape *s) {
    return (size_t)(s->transposed ? s->O : s->C) * (size_t)s->k * (size_t)s->k;
}
static size_t col_cols_per_image(const ml_conv_shape *s) {
    return s->transposed ? (size_t)s->H * (size_t)s->W : (size_t)s->Ho * (size_t)s->Wo;
}

/* Sub-pixel convt2d: window positions per image ((H + 1) x (W + 1), see below), and floats
 * of its per-image workspace (col 4C and the phase outputs 4O per position). */
static size_t sp_cols_per_image(const ml_conv_shape *s) {
    return (size_t)(s->H + 1) * (size_t)(s->W + 1);
}
static size_t sp_floats_per_image(const ml_conv_shape *s) {
    return (size_t)4 * (size_t)(s->C + s->O) * sp_cols_per_image(s);
}
/* Its Winograd form (subpixel 2, see convt_forward): 3 x 3 tiles of window positions per
 * image (TA per column, TB per row), and floats per image (V 16C and M 16 4O per tile). */
static int wg_tiles_1d(int H) { return (H + 1 + 2) / 3; }
static size_t wg_tiles(const ml_conv_shape *s) {
    return (size_t)wg_tiles_1d(s->H) * (size_t)wg_tiles_1d(s->W);
}
static size_t wg_floats_per_image(const ml_conv_shape *s) {
    return (size_t)16 * (size_t)(s->C + 4 * s->O) * wg_tiles(s);
}
/* one thread's part of the Winograd workspace: V and M of a chunk, and slack, since
 * ml_pp_gemm reads whole vectors of B */
static size_t wg_thread_floats(const ml_conv_shape *s) {
    return (size_t)s->chunk * wg_floats_per_image(s) + 16;
}
/* U packed for ml_pp_gemm, 16 points: as A (4O x C) of the forward, or A^T (C x 4O) of dV */
static size_t wg_pp_floats(const ml_conv_shape *s) {
    const size_t a = ml_pp_floats(4 * s->O, s->C), b = ml_pp_floats(s->C, 4 * s->O);
    return a > b ? a : b;
}
/* where the packed U starts: after U, the team's dU and the team's V and M */
static size_t wg_packed_off(const ml_conv_shape *s) {
    return (size_t)64 * s->C * s->O * (size_t)(1 + s->team) + (size_t)s->team * wg_thread_floats(s);
}

/* The direct kernel's vectors per output row, its output-channel block for Cout output
 * channels, and Cout rounded up to the block (the repacked weights' row length). */
static int s1_nv(int Wo) { return Wo <= 16 ? 1 : Wo <= 32 ? 2 : DIRECT_NV; }
static int s1_block(int Cout, int Wo) {
    if (Cout <= DIRECT_OB) return DIRECT_OB;
    return Wo <= 16 ? DIRECT_OB16 : Wo <= 32 ? DIRECT_OB32 : DIRECT_DXB;
}
static int s1_padded(int Cout, int Wo) {
    return (Cout + s1_block(Cout, Wo) - 1) / s1_block(Cout, Wo) * s1_block(Cout, Wo);
}
/* floats of the padded input rows that one output row of the direct kernel reads */
static size_t s1_rows_floats(int Cin, int k, int Wo) {
    const int bw = 16 * s1_nv(Wo);
    return (size_t)Cin * k * (size_t)((Wo + bw - 1) / bw * bw + k);
}

/* direct stride-2 conv2d (shape.direct 3, below) */
/* Split rows: padded input row r = iy + p, padded column q = ix + p. Output column ox reads
 * padded columns 2 ox + kx: kx = 0 and 2 the even columns ox and ox + 1 of the row's even
 * half, kx = 1 column ox of its odd half. Each padded row is split once into its halves, so
 * every tap is a unit-stride vector load. */
#define S2_MAX_C 16     /* direct 3: up to this many input channels (see ml_conv2d_shape) */
#define S2_FWD_MAX_C 32 /* direct 4, its forward alone: up to this many */
#define S2_MAX_SPLIT ((size_t)1 << 20) /* and one image's split rows up to this many floats */
#define S2_OB 8         /* output channels per register block at 2 vectors per output row */
#define S2_OB16 16      /* ... at 1 vector (rows up to 16 wide) */
#define S2_Q 3          /* dw: output channels per tile (3 channels x 9 taps = 27 accumulators) */

static int s2_nv(int Wo) { return Wo <= 16 ? 1 : 2; }
static int s2_block(int Wo) { return Wo <= 16 ? S2_OB16 : S2_OB; }
static int s2_padded(int O, int Wo) { return (O + s2_block(Wo) - 1) / s2_block(Wo) * s2_block(Wo); }
/* floats of one half of a split row: the output row rounded up to the vector block, and 16
 * more (the kx = 2 tap reads one column further) */
static int s2_len(int Wo) {
    const int bw = 16 * s2_nv(Wo);
    return (Wo + bw - 1) / bw * bw + 16;
}
/* the padded rows the windows reach, 2 Ho + 1, and the floats of one image's split rows */
static int s2_rows(int Ho) { return 2 * Ho + 1; }
static size_t s2_split_floats(int C, int Ho, int Wo) {
    return (size_t)C * s2_rows(Ho) * 2 * s2_len(Wo);
}
/* output rows of dw's gradient planes: Wo rounded up to 16 (zeros past Wo) */
static int s2_ldg(int Wo) { return (Wo + 15) / 16 * 16; }

/* the workspace: the forward's repacked weights (C 9, Opad), the backward's per-image dw
 * partials (B, O C 9) */
static size_t s2_fwd_floats(const ml_conv_shape *s) { return (size_t)s->C * 9 * s2_padded(s->O, s->Wo); }
static size_t s2_workspace(const ml_conv_shape *s) {
    const size_t fw = s2_fwd_floats(s);
    const size_t bw = (size_t)s->B * s->O * s->C * 9;
    return fw > bw ? fw : bw;
}

static void pick_chunk(ml_conv_shape *s) {
    size_t per = s->subpixel == 2 ? wg_floats_per_image(s)
                 : s->subpixel ? sp_floats_per_image(s) : col_rows(s) * col_cols_per_image(s);
    size_t c = per ? (s->subpixel == 2 ? WG_TARGET_FLOATS : COL_TARGET_FLOATS) / per : 1;
    /* the Winograd form on images of a few tiles (8 x 8: 9, 16 x 16: 36): a chunk's images
     * side by side (wg_geometry) make its 16 GEMMs at least WG_MIN_TILES wide and the
     * transforms' tile rows at least 24 tiles long */
    if (s->subpixel == 2 && wg_tiles(s) < 64 && c * wg_tiles(s) < WG_MIN_TILES)
        c = (WG_MIN_TILES + wg_tiles(s) - 1) / wg_tiles(s);
    if (c < 1) c = 1;
    if (c > (size_t)s->B) c = (size_t)s->B;
    s->chunk = (int)c;
}

static int check_common(const char *op, int B, int C, int H, int W, int O, int k, int stride,
                        int pad, ml_conv_act act) {
    if (B < 1 || C < 1 || H < 1 || W < 1)
        return ml_errorf("%s: input shape (B %d, C %d, H %d, W %d) must be positive", op, B, C,
                         H, W);
    if (O < 1) return ml_errorf("%s: output channels must be >= 1, got %d", op, O);
    if (k < 1) return ml_errorf("%s: kernel size must be >= 1, got %d", op, k);
    if (stride < 1) return ml_errorf("%s: stride must be >= 1, got %d", op, stride);
    if (pad < 0 || pad >= k)
        return ml_errorf("%s: padding must be in [0, kernel size %d), got %d", op, k, pad);
    if (act != ML_CONV_ACT_NONE && act != ML_CONV_ACT_RELU && act != ML_CONV_ACT_SIGMOID)
        return ml_errorf("%s: unknown activation %d (expected 0 none, 1 relu, 2 sigmoid)", op,
                         (int)act);
    return ML_OK;
}

int ml_conv2d_shape(ml_conv_shape *s, int B, int C, int H, int W, int O, int k, int stride,
                    int pad, ml_conv_act act) {
    if (check_common("conv2d", B, C, H, W, O, k, stride, pad, act)) return ML_ERR;
    if (H + 2 * pad < k || W + 2 * pad < k)
        return ml_errorf("conv2d: padded input %dx%d is smaller than the %dx%d kernel",
                         H + 2 * pad, W + 2 * pad, k, k);
    *s = (ml_conv_shape){.B = B, .C = C, .H = H, .W = W, .O = O, .k = k, .stride = stride,
                         .pad = pad, .Ho = (H + 2 * pad - k) / stride + 1,
                         .Wo = (W + 2 * pad - k) / stride + 1, .transposed = 0, .act = act};
    /* the SRNN output conv (32 -> 3 channels): a 3-row GEMM over a 9x blown-up im2col
     * matrix is memory bound; direct loops read x once. So are the COD experts' branches
     * on 32x32 maps (8 channels) and 16x16 maps (16 channels, one register block) */
    s->direct = stride == 1 && (O < DIRECT_MAX_O || (O == DIRECT_MAX_O && s->Wo <= 16)) &&
                k <= DIRECT_MAX_K && s->Wo <= DIRECT_MAX_W && W <= DIRECT_MAX_W &&
                s1_rows_floats(C, k, s->Wo) <= DIRECT_MAX_ROWS && s1_rows_floats(O, k, W) <= DIRECT_MAX_ROWS;
    /* more output channels on 16- to 32-wide rows (the COD decoder's 3x3 convs at 16x16 and
     * 32x32): the direct forward is faster than im2col + GEMM (1.8x at 96 -> 32 channels,
     * 32x32), their backward is not (its dw re-reads dy for every input channel) */
    if (!s->direct && stride == 1 && k >= 3 && k <= DIRECT_MAX_K && O <= DIRECT_FWD_MAX_O && s->Wo >= 16 &&
        s->Wo <= 32 && s1_rows_floats(C, k, s->Wo) <= DIRECT_MAX_ROWS)
        s->direct = 2;
    /* 3x3 stride 2 on few input channels (the encoders' first conv, 3 -> 32 channels): direct
     * forward, dw and db (shape.direct 3; dx stays on the GEMM path). Against the GEMM path
     * at 1 thread, batch 64, 32 output channels (bench/conv1_bench.c, docs/PERFORMANCE.md):
     * forward and backward both faster from 1 to 16 input channels, on 64x64 inputs (3: 2.8
     * ms against 7.2; 16: 14.3 against 25.6) and on 32x32 ones (16: 4.5 against 6.7); at 32
     * channels (32x32 -> 16x16, 64 out) the forward is 25% faster but dw 30% slower. So up to
     * 32 input channels (the encoders' second conv, 32 -> 64 channels at 32x32 -> 16x16)
     * direct 3's forward alone, the GEMM path's backward (direct 4), as direct 2 is for stride
     * 1: 6.2-6.5 ms against 8.7-8.9 for the GEMM forward at 1 thread, batch 64 */
    if (!s->direct && stride == 2 && k == 3 && C <= S2_FWD_MAX_C && s2_split_floats(C, s->Ho, s->Wo) <= S2_MAX_SPLIT)
        s->direct = C <= S2_MAX_C ? 3 : 4;
    pick_chunk(s);
    return ML_OK;
}

int ml_convt2d_shape(ml_conv_shape *s, int B, int C, int H, int W, int O, int k, int stride,
                     int pad, ml_conv_act act) {
    if (check_common("convt2d", B, C, H, W, O, k, stride, pad, act)) return ML_ERR;
    int Ho = (H - 1) * stride - 2 * pad + k, Wo = (W - 1) * stride - 2 * pad + k;
    if (Ho < 1 || Wo < 1)
        return ml_errorf("convt2d: output %dx%d is empty (input %dx%d, kernel %d, stride %d, "
                         "padding %d)", Ho, Wo, H, W, k, stride, pad);
    *s = (ml_conv_shape){.B = B, .C = C, .H = H, .W = W, .O = O, .k = k, .stride = stride,
                         .pad = pad, .Ho = Ho, .Wo = Wo, .transposed = 1, .act = act};
    /* the sub-pixel GEMMs run on (H + 1) x (W + 1) window positions; below about 32 x 32
     * those extra 6% columns, and im2col over short rows, cost more than the general
     * path's col2im (bench/conv_bench.c: 4x4 to 16x16 inputs are faster on the general path) */
    s->subpixel = k == 4 && stride == 2 && pad == 1 &&
                  (size_t)(H + 1) * (size_t)(W + 1) * 100 <= (size_t)H * (size_t)W * 108;
    /* its Winograd form does 1.8x (8 x 8, 16 x 16) to 2.1x (32 x 32) fewer multiply-adds in
     * small per-thread GEMMs; measured faster from 8 x 8 up (CPU time at 1 thread: 32 x 32,
     * 64 -> 32 channels, 107 ms against 136; 16 x 16, 128 -> 32, 60 against 66; 8 x 8 with a
     * chunk's images side by side, 256 -> 64, 37 ms against 47), slower at 4 x 4 (2 x 2
     * tiles for 5 x 5 windows; 256 -> 64, 17 ms against 12) */
    if (k == 4 && stride == 2 && pad == 1 && H >= 8 && W >= 8) s->subpixel = 2;
    s->team = omp_get_max_threads(); /* the Winograd form's workspace holds one part per thread */
    pick_chunk(s);
    return ML_OK;
}

size_t ml_conv_in_size(const ml_conv_shape *s) {
    return (size_t)s->B * (size_t)s->C * (size_t)s->H * (size_t)s->W;
}
size_t ml_conv_out_size(const ml_conv_shape *s) {
    return (size_t)s->B * (size_t)s->O * (size_t)s->Ho * (size_t)s->Wo;
}
size_t ml_conv_weight_size(const ml_conv_shape *s) {
    return (size_t)s->O * (size_t)s->C * (size_t)s->k * (size_t)s->k;
}

/* The direct kernel's output-channel block for Cout output channels, and Cout rounded up to
 * it (the repacked weights' row length). */
/*
 * conv2d's dx on the GEMM path. For stride 1 it is itself a stride-1 convolution, of the
 * output gradient g with the kernel transposed (C <-> O) and flipped, padding k - 1 - p:
 *   dx[c][iy][ix] = sum over o, ky, kx of w[o][c][k-1-ky][k-1-kx] g[o][iy - (k-1-p) + ky][...]
 * so it runs as im2col(g) (O k k rows) and one GEMM with K = O k k, like a forward; the
 * flip is done by im2col reading the window backwards, so the kernel is only transposed. The
 * adjoint form (dcol = w^T g with K = O, C k k rows, then col2im adding k k of them into
 * every pixel) writes and re-reads C/O times more floats and runs its GEMM with a short K.
 * The column matrix of g must fit where x's was: O <= C (always so for a 1x1 kernel, whose
 * column matrix is g itself).
 */
static int dx_as_conv(const ml_conv_shape *s) {
    return !s->transposed && s->stride == 1 && (s->k == 1 || s->O <= s->C);
}

static size_t layer_workspace(const ml_conv_shape *s) {
    if (s->subpixel == 2) /* U and a dU per thread, each thread's V and M of one chunk, packed U */
        return wg_packed_off(s) + 16 * wg_pp_floats(s);
    if (s->subpixel) { /* repacked weights and their gradient, then one chunk's col and G */
        return (size_t)32 * s->C * s->O + (size_t)s->chunk * sp_floats_per_image(s);
    }
    const size_t kk = (size_t)s->k * s->k;
    const size_t fw = (size_t)s->C * kk * (size_t)s1_padded(s->O, s->Wo);
    if (s->direct == 1) { /* the pre-activation gradient, then the repacked weights */
        const size_t bw = (size_t)s->O * kk * (size_t)s1_padded(s->C, s->W);
        return ml_conv_out_size(s) + (fw > bw ? fw : bw);
    }
    size_t n = (size_t)s->chunk * col_cols_per_image(s);
    size_t cm = (size_t)(s->C > s->O ? s->C : s->O);
    size_t ws = col_rows(s) * n + cm * n;
    if (dx_as_conv(s)) ws += ml_conv_weight_size(s); /* the flipped, transposed kernel */
    /* transposed backward with an activation keeps the chunk's pre-activation gradient */
    if (s->transposed && s->act != ML_CONV_ACT_NONE)
        ws += (size_t)s->chunk * (size_t)s->O * (size_t)s->Ho * (size_t)s->Wo;
    if (s->direct == 2 && fw > ws) ws = fw; /* the direct forward's repacked weights */
    if (s->direct == 3 && s2_workspace(s) > ws) ws = s2_workspace(s);
    if (s->direct == 4 && s2_fwd_floats(s) > ws) ws = s2_fwd_floats(s); /* its forward's weights */
    return ws;
}

size_t ml_conv_workspace_floats(const ml_conv_shape *s) {
    return layer_workspace(s) + (size_t)s->B * (size_t)s->O; /* + the bias partials */
}

/* ------------------------------------------------------------------------------------ */
/* data movement */

/*
 * A layer's input as one or two channel ranges read in place: channels [0, Ca) of image i
 * are plane c of image i in a (B, Ca, HW), channels [Ca, C) plane c - Ca of image i in b
 * (B, C - Ca, HW). One buffer is {x, NULL, C}; the U-Net decoder's [x, skip] is two.
 */
typedef struct cat_in {
    const float *a, *b;
    int Ca;
    int cn; /* > 0: a alone holds the planes channel-major, (C, cn, HW): a chunk's (C, n)
               GEMM layout of cn images (conv2d's dx reads its output gradient so) */
} cat_in;
/* The gradient of such an input: dx planes, written (acc 0) or accumulated into (acc 1);
 * a NULL: no input gradient. */
typedef struct cat_out {
    float *a, *b;
    int Ca, acc;
} cat_out;

static const float *in_plane(cat_in x, int C, size_t HW, int i, int c) {
    if (x.cn) return x.a + ((size_t)c * x.cn + i) * HW;
    return c < x.Ca ? x.a + ((size_t)i * x.Ca + c) * HW
                    : x.b + ((size_t)i * (C - x.Ca) + (c - x.Ca)) * HW;
}
static float *out_plane(cat_out d, int C, size_t HW, int i, int c) {
    return c < d.Ca ? d.a + ((size_t)i * d.Ca + c) * HW
                    : d.b + ((size_t)i * (C - d.Ca) + (c - d.Ca)) * HW;
}
static cat_in one_in(const float *x, int C) { return (cat_in){x, NULL, C, 0}; }

/* Stride-1 im2col's padded planes live on the stack up to this many floats (64x64 maps with
 * padding up to 3 fit); larger planes take the row-by-row path. */
#define IM2COL_PAD_MAX 5041

/* o[cy CW + cx] = src[cy ld + s cx]: one image's block of a column-matrix row, s = 1 or 2
 * (the stride). Inlined with CW and s constants for the small maps deep in a network (2 to 32
 * wide), where a memcpy per row of 4 or 8 floats costs more than the copy. */
static inline __attribute__((always_inline)) void copy_block(float *restrict o,
                                                             const float *restrict src, int CH,
                                                             int CW, int ld, int s) {
    for (int cy = 0; cy < CH; cy++)
#pragma omp simd
        for (int cx = 0; cx < CW; cx++) o[(size_t)cy * CW + cx] = src[(size_t)cy * ld + s * cx];
}
static inline __attribute__((always_inline)) void copy_block_s(float *restrict o,
                                                               const float *restrict src, int CH,
                                                               int CW, int ld, int s) {
    if (s == 1) copy_block(o, src, CH, CW, ld, 1);
    else copy_block(o, src, CH, CW, ld, 2);
}

/* pad (PH, PW) = the (IH, IW) plane xp at row and column offset p, zeros around it; columns
 * of xp beyond PW - p are left out (a stride-1 im2col whose windows do not reach them). */
static inline void pad_plane(float *restrict pad, const float *restrict xp, int IH, int IW,
                             int PH, int PW, int p) {
    const int n = IW < PW - p ? IW : PW - p;
    for (int r = 0; r < PH; r++) {
        const int iy = r - p;
        float *d = pad + (size_t)r * PW;
        if (iy < 0 || iy >= IH) {
            for (int j = 0; j < PW; j++) d[j] = 0;
            continue;
        }
        const float *src = xp + (size_t)iy * IW;
        for (int j = 0; j < p; j++) d[j] = 0;
#pragma omp simd
        for (int j = 0; j < n; j++) d[p + j] = src[j];
        for (int j = p + n; j < PW; j++) d[j] = 0;
    }
}

/* The padded plane of a stride-2 im2col or col2im over CH x CW window positions of a k x k
 * window: (CH - 1) 2 + k rows (and at least the image's p + IH), likewise columns. */
static int s2_extent(int C, int n, int k, int p) {
    const int e = (C - 1) * 2 + k;
    return e > p + n ? e : p + n;
}
static int s2_fits(int IH, int IW, int CH, int CW, int k, int p) { /* columns rounded up to even */
    return (size_t)s2_extent(CH, IH, k, p) * (size_t)((s2_extent(CW, IW, k, p) + 1) / 2 * 2) <=
           IM2COL_PAD_MAX;
}

/* im2col for stride s = 1 or 2 through a padded plane: each (image, channel) plane is
 * zero-padded once into a stack buffer, then every one of its k k rows is a branch-free
 * strided copy of that buffer. The row-by-row path below works out the valid span of every
 * row and pads it with memset calls, which dominate for the 2- to 16-wide rows of the small
 * maps (the encoder's stride-2 3x3 convs, the general transposed conv's backward, the
 * stride-1 convs on 4x4 and 8x8 maps). Same values. */
static void im2col_pad(float *col, cat_in x, int i0, int nb, int C, int IH, int IW, int CH,
                       int CW, int k, int p, int s, int flip) {
    const size_t ncol = (size_t)nb * CH * CW, blk = (size_t)CH * CW;
    /* padded plane: x[iy][ix] at (iy + p, ix + p) */
    const int PH = s == 1 ? CH + k - 1 : s2_extent(CH, IH, k, p);
    const int PW = s == 1 ? CW + k - 1 : s2_extent(CW, IW, k, p), ld = s * PW;
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < nb; i++) {
            float pad[IM2COL_PAD_MAX];
            pad_plane(pad, in_plane(x, C, (size_t)IH * IW, i0 + i, c), IH, IW, PH, PW, p);
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    float *o = col + ((size_t)(c * k + ky) * k + kx) * ncol + (size_t)i * blk;
                    const float *src = flip ? pad + (size_t)(k - 1 - ky) * PW + (k - 1 - kx)
                                            : pad + (size_t)ky * PW + kx;
                    switch (CW) {
                    case 2: copy_block_s(o, src, CH, 2, ld, s); break;
                    case 4: copy_block_s(o, src, CH, 4, ld, s); break;
                    case 8: copy_block_s(o, src, CH, 8, ld, s); break;
                    case 16: copy_block_s(o, src, CH, 16, ld, s); break;
                    case 32: copy_block_s(o, src, CH, 32, ld, s); break;
                    default: copy_block_s(o, src, CH, CW, ld, s); break;
                    }
                }
        }
}

/*
 * Column matrix of images i0 .. i0 + nb - 1 of x (C, IH, IW planes) seen through a k x k
 * window with the given stride and padding, sampled at CH x CW positions:
 *   col[(c k + ky) k + kx][(i CH + cy) CW + cx] = x[i0 + i, c, cy s - p + ky, cx s - p + kx] (0 outside)
 * With flip the window is read backwards: row (c k + ky) k + kx samples tap (k-1-ky, k-1-kx).
 */
static void im2col_flip(float *col, cat_in x, int i0, int nb, int C, int IH, int IW, int CH,
                        int CW, int k, int s, int p, int flip) {
    const size_t ncol = (size_t)nb * CH * CW;
    const int rows = C * k * k;
    if (s == 1 && (size_t)(CH + k - 1) * (size_t)(CW + k - 1) <= IM2COL_PAD_MAX) {
        im2col_pad(col, x, i0, nb, C, IH, IW, CH, CW, k, p, 1, flip);
        return;
    }
    if (s == 2 && s2_fits(IH, IW, CH, CW, k, p)) {
        im2col_pad(col, x, i0, nb, C, IH, IW, CH, CW, k, p, 2, flip);
        return;
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < nb; i++) {
            const int c = r / (k * k);
            const int ky = flip ? k - 1 - (r / k) % k : (r / k) % k, kx = flip ? k - 1 - r % k : r % k;
            const float *xp = in_plane(x, C, (size_t)IH * IW, i0 + i, c);
            float *cp = col + (size_t)r * ncol + (size_t)i * CH * CW;
            /* valid cx range: 0 <= cx s - p + kx < IW */
            int cx0 = 0, cx1 = CW;
            while (cx0 < CW && cx0 * s - p + kx < 0) cx0++;
            while (cx1 > cx0 && (cx1 - 1) * s - p + kx >= IW) cx1--;
            for (int cy = 0; cy < CH; cy++) {
                const int iy = cy * s - p + ky;
                float *o = cp + (size_t)cy * CW;
                if (iy < 0 || iy >= IH) {
                    memset(o, 0, sizeof(float) * (size_t)CW);
                    continue;
                }
                const float *row = xp + (size_t)iy * IW - p + kx;
                for (int cx = 0; cx < cx0; cx++) o[cx] = 0;
                if (s == 1) {
                    memcpy(o + cx0, row + cx0, sizeof(float) * (size_t)(cx1 - cx0));
                } else if (s == 2) {
#pragma omp simd
                    for (int cx = cx0; cx < cx1; cx++) o[cx] = row[2 * cx];
                } else {
                    for (int cx = cx0; cx < cx1; cx++) o[cx] = row[(size_t)cx * s];
                }
                for (int cx = cx1; cx < CW; cx++) o[cx] = 0;
            }
        }
    }
}

static void im2col(float *col, cat_in x, int i0, int nb, int C, int IH, int IW, int CH, int CW,
                   int k, int s, int p) {
    im2col_flip(col, x, i0, nb, C, IH, IW, CH, CW, k, s, p, 0);
}

/* d[cy ld + cx] += c[cy CW + cx] */
static inline __attribute__((always_inline)) void add_block(float *restrict d,
                                                            const float *restrict c, int CH,
                                                            int CW, int ld) {
    for (int cy = 0; cy < CH; cy++)
#pragma omp simd
        for (int cx = 0; cx < CW; cx++) d[(size_t)cy * ld + cx] += c[(size_t)cy * CW + cx];
}

/* col2im_plane for stride 2 through a padded plane on the stack, its even and odd columns
 * in two planes (PH, PW2), so that each of the k k rows adds to consecutive floats: img is
 * copied in (acc; else the plane starts at 0), the rows are added branch-free in the same
 * order, the inside is copied back, so every pixel gets the same sum as on the row-by-row
 * path. */
static void col2im_s2(float *img, const float *col, size_t ncol, int IH, int IW, int CH,
                      int CW, int k, int p, int acc) {
    const int PH = s2_extent(CH, IH, k, p), PW2 = (s2_extent(CW, IW, k, p) + 1) / 2;
    const size_t half = (size_t)PH * PW2;
    float pad[IM2COL_PAD_MAX];
    memset(pad, 0, sizeof(float) * 2 * half);
    /* padded column 2 j + ph holds img column 2 j + ph - p: j in [j0[ph], j1[ph]) */
    int j0[2], j1[2];
    for (int ph = 0; ph < 2; ph++) {
        j0[ph] = p - ph > 0 ? (p - ph + 1) / 2 : 0;
        j1[ph] = (IW + p - ph + 1) / 2;
    }
    for (int iy = 0; iy < (acc ? IH : 0); iy++)
        for (int ph = 0; ph < 2; ph++) {
            const float *src = img + (size_t)iy * IW + ph - p;
            float *d = pad + (size_t)ph * half + (size_t)(iy + p) * PW2;
#pragma omp simd
            for (int j = j0[ph]; j < j1[ph]; j++) d[j] = src[2 * j];
        }
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            const float *cp = col + (size_t)(ky * k + kx) * ncol;
            float *d = pad + (size_t)(kx & 1) * half + (size_t)ky * PW2 + (kx >> 1);
            switch (CW) {
            case 2: add_block(d, cp, CH, 2, 2 * PW2); break;
            case 4: add_block(d, cp, CH, 4, 2 * PW2); break;
            case 8: add_block(d, cp, CH, 8, 2 * PW2); break;
            case 16: add_block(d, cp, CH, 16, 2 * PW2); break;
            case 32: add_block(d, cp, CH, 32, 2 * PW2); break;
            default: add_block(d, cp, CH, CW, 2 * PW2); break;
            }
        }
    for (int iy = 0; iy < IH; iy++)
        for (int ph = 0; ph < 2; ph++) {
            float *dst = img + (size_t)iy * IW + ph - p;
            const float *sr = pad + (size_t)ph * half + (size_t)(iy + p) * PW2;
#pragma omp simd
            for (int j = j0[ph]; j < j1[ph]; j++) dst[2 * j] = sr[j];
        }
}

/*
 * The adjoint of im2col for one image plane: img (IH, IW) += (acc) or = (from 0) the sum
 * over the k*k rows col_r[(cy CW + cx)] of row r = ky k + kx at position
 * (cy s - p + ky, cx s - p + kx). col points at the first of the plane's k*k rows, which
 * are ncol apart. Fixed order.
 */
static void col2im_plane(float *img, const float *col, size_t ncol, int IH, int IW, int CH,
                         int CW, int k, int s, int p, int acc) {
    if (s == 2 && s2_fits(IH, IW, CH, CW, k, p)) {
        col2im_s2(img, col, ncol, IH, IW, CH, CW, k, p, acc);
        return;
    }
    if (!acc) memset(img, 0, sizeof(float) * (size_t)IH * IW);
    for (int ky = 0; ky < k; ky++) {
        for (int kx = 0; kx < k; kx++) {
            const float *cp = col + (size_t)(ky * k + kx) * ncol;
            int cx0 = 0, cx1 = CW;
            while (cx0 < CW && cx0 * s - p + kx < 0) cx0++;
            while (cx1 > cx0 && (cx1 - 1) * s - p + kx >= IW) cx1--;
            for (int cy = 0; cy < CH; cy++) {
                const int iy = cy * s - p + ky;
                if (iy < 0 || iy >= IH) continue;
                float *row = img + (size_t)iy * IW - p + kx;
                const float *c = cp + (size_t)cy * CW;
                if (s == 1) {
                    for (int cx = cx0; cx < cx1; cx++) row[cx] += c[cx];
                } else if (s == 2) {
                    for (int cx = cx0; cx < cx1; cx++) row[2 * cx] += c[cx];
                } else {
                    for (int cx = cx0; cx < cx1; cx++) row[(size_t)cx * s] += c[cx];
                }
            }
        }
    }
}

/* t (C, nb*HW) <- images i0 .. i0 + nb - 1 of x: the chunk's channels side by side. */
static void nchw_to_cn(float *t, cat_in x, int i0, int nb, int C, size_t HW) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < nb; i++)
            memcpy(t + ((size_t)c * nb + i) * HW, in_plane(x, C, HW, i0 + i, c),
                   sizeof(float) * HW);
}

/* expf for the vectorised sigmoid: e^v = 2^n e^r, n = v / ln 2 rounded to nearest (rintf
 * in the default rounding mode; roundevenf does not vectorise), |r| <= ln 2 / 2, e^r by
 * its degree-6 Taylor polynomial (relative error < 2.3e-7, about 2 ulp; sigmoid within
 * 1e-7 of the exact value), 2^n built in the exponent bits. v is clamped to [-87, 87]
 * (sigmoid is 0 or 1 to float precision well inside that). Branch-free, so loops over it
 * vectorise. */
static inline float exp_approx(float v) {
    v = v < -87.0f ? -87.0f : v > 87.0f ? 87.0f : v;
    const float n = __builtin_rintf(v * 1.44269504088896341f);
    const float r = (v - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const union { int i; float f; } scale = {((int)n + 127) << 23};
    return p * scale.f;
}

static float act_fwd(ml_conv_act act, float v) {
    if (act == ML_CONV_ACT_RELU) return v > 0 ? v : 0;
    if (act == ML_CONV_ACT_SIGMOID) return 1.0f / (1.0f + expf(-v));
    return v;
}

/* Gradient before the activation from the gradient after it and the output y. */
static float act_bwd(ml_conv_act act, float dy, float y) {
    if (act == ML_CONV_ACT_RELU) return y > 0 ? dy : 0;
    if (act == ML_CONV_ACT_SIGMOID) return dy * y * (1 - y);
    return dy;
}

/* sum over j < n of act_bwd(act, d[j], y[j]) in LANES float partials (lane = j mod LANES,
 * so the loop vectorises without reassociating anything), then the lanes in order. */
static float act_bwd_sum(ml_conv_act act, const float *d, const float *y, size_t n) {
    float acc[LANES] = {0};
    size_t j = 0;
    if (act == ML_CONV_ACT_RELU)
        for (; j + LANES <= n; j += LANES)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] += y[j + l] > 0 ? d[j + l] : 0.0f;
    else if (act == ML_CONV_ACT_SIGMOID)
        for (; j + LANES <= n; j += LANES)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] += d[j + l] * y[j + l] * (1 - y[j + l]);
    else
        for (; j + LANES <= n; j += LANES)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] += d[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += act_bwd(act, d[j], y ? y[j] : 0);
    float sum = 0;
    for (int l = 0; l < LANES; l++) sum += acc[l];
    return sum;
}

/* db[o] += sum over images and pixels of the pre-activation gradient: one float partial
 * per (image, channel) in parallel, then summed over images in double, in a fixed order.
 * part holds B O floats. */
static void bias_finish(float *db, const float *part, int B, int O) {
    for (int o = 0; o < O; o++) {
        double acc = 0;
        for (int i = 0; i < B; i++) acc += part[(size_t)i * O + o];
        db[o] += (float)acc;
    }
}

static void bias_backward(float *db, const float *dy, const float *y, ml_conv_act act, int B,
                          int O, size_t HW, float *part) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < B; i++)
        for (int o = 0; o < O; o++) {
            const float *d = dy + ((size_t)i * O + o) * HW;
            const float *yy = y ? y + ((size_t)i * O + o) * HW : NULL;
            part[(size_t)i * O + o] = act_bwd_sum(act, d, yy, HW);
        }
    bias_finish(db, part, B, O);
}

/* ------------------------------------------------------------------------------------ */
/* direct stride-1 conv2d: register-blocked loops over zero-padded image copies */

/* Every kernel below works on a zero-padded copy of an input plane, so the inner loops are
 * branch-free runs over contiguous floats, and keeps its accumulators (a few channels x a
 * few 16-float vectors of an output row, or a few 16-lane partials per weight) in
 * registers. */
#define DIRECT_CB 16 /* input channels per dx accumulator block */

/* dst[0, lp) = 0, dst[lp, lp + n) = src, dst[lp + n, len) = 0 */
static void pad_row(float *dst, int len, const float *src, int n, int lp) {
    for (int j = 0; j < lp; j++) dst[j] = 0;
    memcpy(dst + lp, src, sizeof(float) * (size_t)n);
    for (int j = lp + n; j < len; j++) dst[j] = 0;
}

typedef double v8d __attribute__((vector_size(64)));

/*
 * Stride-1 convolution, register blocked: out[i][o][oy][ox] (=, or += when accumulate) of
 * act(bias[o] + sum in[i][c][oy - p + ky][ox - p + kx] wt[(c k + ky) k + kx][o]), with wt
 * repacked as (Cin k k, Opad), Opad = Cout rounded up to the channel block (zero columns).
 * Each image is copied once, zero-padded, into a per-thread buffer (every input row is read
 * by k output rows); then for each output row a block of OB channels x NV vectors
 * accumulates in registers over all Cin k k taps. conv2d forward is this kernel; conv2d's
 * dx is too, on dy with the kernel flipped and transposed and padding k - 1 - p.
 */
/* -std=c11 implies -ffp-contract=off: without this the register-blocked loops below run as
 * separate multiplies and adds instead of FMAs (half the throughput) */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
/* One output row oy of image i (out_i: its Cout planes), from its padded copy (Cin planes of
 * Hp rows of len floats). OB and NV must be compile-time constants where this is inlined: it
 * is called from a switch inside the parallel region, since gcc outlines an OpenMP region
 * before it inlines, and a region inside this function would get OB and NV as variables
 * (accumulators in memory, 2-3x slower). */
static inline __attribute__((always_inline)) void
s1_row(const int OB, const int NV, const float *pad, int Cin, int Hp, int len, float *out_i, int Cout,
       int Ho, int Wo, int oy, int k, int Opad, const float *wt, const float *bias, ml_conv_act act,
       int accumulate) {
    const int BW = NV * 16;
    for (int o0 = 0; o0 < Cout; o0 += OB)
        for (int j0 = 0; j0 < Wo; j0 += BW) {
            /* fully unrolled, so that acc and xv live in registers */
            v16 acc[DIRECT_OB_MAX][DIRECT_NV];
#pragma GCC unroll 16
            for (int q = 0; q < OB; q++)
#pragma GCC unroll 16
                for (int v = 0; v < NV; v++) acc[q][v] = (v16){0};
            for (int t = 0; t < Cin * k; t++) {
                const float *r = pad + ((size_t)(t / k) * Hp + oy + t % k) * len + j0;
                const float *wr = wt + (size_t)t * k * Opad + o0;
                for (int kx = 0; kx < k; kx++) {
                    v16 xv[DIRECT_NV];
#pragma GCC unroll 16
                    for (int v = 0; v < NV; v++) xv[v] = *(const v16u *)(r + kx + 16 * v);
#pragma GCC unroll 16
                    for (int q = 0; q < OB; q++) {
                        const float wv = wr[kx * Opad + q];
#pragma GCC unroll 16
                        for (int v = 0; v < NV; v++) acc[q][v] += wv * xv[v];
                    }
                }
            }
            const int je = Wo - j0 < BW ? Wo - j0 : BW;
            for (int q = 0; q < OB && o0 + q < Cout; q++) {
                float a[DIRECT_NV * 16];
                memcpy(a, acc[q], sizeof(float) * 16 * (size_t)NV);
                float *dst = out_i + ((size_t)(o0 + q) * Ho + oy) * Wo + j0;
                if (accumulate)
                    for (int j = 0; j < je; j++) dst[j] += a[j];
                else {
                    const float bv = bias ? bias[o0 + q] : 0.0f;
                    if (act == ML_CONV_ACT_SIGMOID) { /* the SRNN output, vectorised */
                        for (int j = 0; j < je; j++) dst[j] = a[j] + bv;
#pragma omp simd
                        for (int j = 0; j < je; j++) dst[j] = 1.0f / (1.0f + exp_approx(-dst[j]));
                    } else
                        for (int j = 0; j < je; j++) dst[j] = act_fwd(act, a[j] + bv);
                }
            }
        }
}

/* The channel block and vectors per row (s1_block, s1_nv): DIRECT_OB channels x DIRECT_NV
 * vectors for few output channels (conv2d forward), DIRECT_DXB x DIRECT_NV for many (conv2d's
 * dx; the SRNN output conv: 3 dy channels -> 32 dx channels). There each 16-float dy load
 * feeds DIRECT_DXB FMAs instead of DIRECT_OB, and the kernel stops being bound by loads (half
 * of them unaligned ones that split a cache line). Narrow rows take fewer vectors and more
 * channels. */
static void s1_conv(int B, cat_in in, int Cin, int H, int W, float *out, int Cout, int Ho,
                    int Wo, int k, int p, const float *wt, const float *bias, ml_conv_act act,
                    int accumulate) {
    const int Opad = s1_padded(Cout, Wo), ob = s1_block(Cout, Wo), nv = s1_nv(Wo);
    const int BW = nv * 16;
    const int len = (Wo + BW - 1) / BW * BW + k - 1; /* padded row: in[ix] at ix + p */
    const int Hp = Ho + k - 1;                       /* padded rows: in[iy] at iy + p */
    const int variant = (nv == 1 ? 0 : nv == 2 ? 2 : 4) + (ob != DIRECT_OB);
    /* Work items: images, or when the images do not share out evenly among the threads
     * (an expert gets any number of them), nt / gcd(B, nt) row blocks of every image, so
     * that each thread gets the same number of rows. A block pads only the input rows it
     * reads. Every output row is computed the same way whatever the split. */
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    int g = B; /* gcd(B, nt) */
    for (int a = nt; a;) {
        const int r = g % a;
        g = a, a = r;
    }
    const int nblk = nt / g <= Ho ? nt / g : Ho;
#pragma omp parallel
    {
        /* one padded image, Cin Hp len floats: on the heap, not an OpenMP thread's stack */
        float *pad = malloc(sizeof(float) * (size_t)Cin * Hp * len);
        if (!pad) abort(); /* no way to report from inside a kernel */
#pragma omp for schedule(static)
        for (int it = 0; it < B * nblk; it++) {
            const int i = it / nblk, oy0 = it % nblk * Ho / nblk, oy1 = (it % nblk + 1) * Ho / nblk;
            for (int c = 0; c < Cin; c++)
                for (int r = oy0; r < oy1 + k - 1; r++) {
                    float *row = pad + ((size_t)c * Hp + r) * len;
                    const int iy = r - p;
                    if (iy < 0 || iy >= H) {
                        memset(row, 0, sizeof(float) * (size_t)len);
                        continue;
                    }
                    const int n = W < len - p ? W : len - p;
                    pad_row(row, len, in_plane(in, Cin, (size_t)H * W, i, c) + (size_t)iy * W, n, p);
                }
            float *out_i = out + (size_t)i * Cout * Ho * Wo;
            /* OB and NV literal in every call (see s1_row) */
            for (int oy = oy0; oy < oy1; oy++) switch (variant) {
#define S1_ROW(OB, NV) s1_row(OB, NV, pad, Cin, Hp, len, out_i, Cout, Ho, Wo, oy, k, Opad, wt, bias, act, accumulate)
                case 0: S1_ROW(DIRECT_OB, 1); break;
                case 1: S1_ROW(DIRECT_OB16, 1); break;
                case 2: S1_ROW(DIRECT_OB, 2); break;
                case 3: S1_ROW(DIRECT_OB32, 2); break;
                case 4: S1_ROW(DIRECT_OB, DIRECT_NV); break;
                default: S1_ROW(DIRECT_DXB, DIRECT_NV); break;
#undef S1_ROW
                }
        }
        free(pad);
    }
}

/* w (O, C, k, k) in the direct kernel's layout: wt[t][o] for tap t = c k k + ky k + kx, o
 * padded to s1_padded (zeros); C k k s1_padded floats */
static size_t direct_wt_floats(const ml_conv_shape *s) {
    return (size_t)s->C * s->k * s->k * s1_padded(s->O, s->Wo);
}

static void direct_wt(const ml_conv_shape *s, float *wt, const float *w) {
    const int C = s->C, k = s->k, O = s->O, kk = k * k;
    const int Opad = s1_padded(O, s->Wo);
    for (int t = 0; t < C * kk; t++)
        for (int o = 0; o < Opad; o++) wt[(size_t)t * Opad + o] = o < O ? w[(size_t)o * C * kk + t] : 0.0f;
}

static void direct_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w,
                           const float *b, float *wt) {
    const int C = s->C, k = s->k, O = s->O;
    direct_wt(s, wt, w);
    s1_conv(s->B, x, C, s->H, s->W, y, O, s->Ho, s->Wo, k, s->pad, wt, b, s->act, 0);
}

/*
 * dw of one input channel, one image: for Q output channels o0 .. o0 + Q - 1 (past O:
 * computed on a valid row and dropped), E kernel rows ky0 .. and U taps kx0 .. (past k:
 * dropped), tap t = (o k + ky) k + kx gets the sum over rows oy and columns ox of
 * g[o][oy][ox] xp[oy + ky][ox + kx]: its 16 float lanes (lane = ox mod 16) added in double
 * to lanes[t] (two vectors of 8), the ragged end of the rows to tails[t]. Q E U accumulators
 * of 16 lanes stay in registers: each dy load feeds E U FMAs, each x load Q. The lanes are
 * summed once per channel, not per image and tile (on 16x16 maps that reduction cost as much
 * as the FMAs); images add up in double, as a sum split over processes does (check_mpi). Q,
 * E and U must be literals where this is inlined (see s1_row).
 */
static inline __attribute__((always_inline)) void
dw_tile(const int Q, const int E, const int U, const float *xp, int len, const float *g, int O, int Ho, int Wo,
        int k, int o0, int ky0, int kx0, v8d *lanes, double *tails) {
    const int Wv = Wo / LANES * LANES;
    v16 acc[8][3][7];
    float tail[8][3][7];
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++)
#pragma GCC unroll 8
        for (int e = 0; e < E; e++)
#pragma GCC unroll 8
            for (int u = 0; u < U; u++) acc[q][e][u] = (v16){0}, tail[q][e][u] = 0;
    for (int oy = 0; oy < Ho; oy++) {
        const float *xr = xp + (size_t)(oy + ky0) * len + kx0;
        const float *gq[8];
        for (int q = 0; q < Q; q++) /* past O: a valid row, result dropped */
            gq[q] = g + ((size_t)(o0 + q < O ? o0 + q : o0) * Ho + oy) * Wo;
        for (int j = 0; j < Wv; j += LANES) {
            v16 gv[8];
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++) gv[q] = *(const v16u *)(gq[q] + j);
#pragma GCC unroll 8
            for (int e = 0; e < E; e++)
#pragma GCC unroll 8
                for (int u = 0; u < U; u++) {
                    v16 xv = *(const v16u *)(xr + (size_t)e * len + j + u);
                    /* one load for the Q FMAs below: gcc would fold it into each of them, and
                     * the loop would run at one load per FMA */
#if defined(__AVX512F__) /* one zmm register holds a v16; without AVX-512 it cannot */
                    __asm__("" : "+v"(xv));
#endif
#pragma GCC unroll 8
                    for (int q = 0; q < Q; q++) acc[q][e][u] += gv[q] * xv;
                }
        }
        for (int j = Wv; j < Wo; j++)
            for (int q = 0; q < Q; q++)
                for (int e = 0; e < E; e++)
                    for (int u = 0; u < U; u++) tail[q][e][u] += gq[q][j] * xr[(size_t)e * len + j + u];
    }
    for (int q = 0; q < Q && o0 + q < O; q++)
        for (int e = 0; e < E && ky0 + e < k; e++)
            for (int u = 0; u < U && kx0 + u < k; u++) {
                const int t = ((o0 + q) * k + ky0 + e) * k + kx0 + u;
                const v16 a = acc[q][e][u];
                lanes[2 * t] += __builtin_convertvector(__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
                lanes[2 * t + 1] +=
                    __builtin_convertvector(__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
                tails[t] += tail[q][e][u];
            }
}

/* The direct dw kernel's tiles (dw_tile): for k = 1, 5 and 7 one kernel row of taps and 8, 4
 * and 2 output channels; else 3 channels x 3 x 3 taps (27 accumulators), which may overrun
 * the kernel. */
static void dw_tiling(int k, int *E, int *U) {
    *E = k == 1 || k == 5 || k == 7 ? 1 : 3;
    *U = k == 1 || k == 5 || k == 7 ? k : 3;
}

static void direct_backward(const ml_conv_shape *s, float *dx, float *dw, const float *g,
                            const float *x, const float *w, float *wt) {
    const int C = s->C, H = s->H, W = s->W, k = s->k, p = s->pad, O = s->O;
    const int Ho = s->Ho, Wo = s->Wo;
    if (dx) {
        /* dx = conv2d(dy, w flipped and transposed, padding k - 1 - p), accumulated */
        const int kk = k * k, Cpad = s1_padded(C, W);
        for (int o = 0; o < O; o++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    for (int c = 0; c < Cpad; c++)
                        wt[(((size_t)o * k + ky) * k + kx) * Cpad + c] =
                            c < C ? w[((size_t)o * C + c) * kk + (k - 1 - ky) * k + (k - 1 - kx)] : 0.0f;
        s1_conv(s->B, one_in(g, O), O, Ho, Wo, dx, C, H, W, k, k - 1 - p, wt, NULL, ML_CONV_ACT_NONE,
                !s->write_dx);
    }
    if (dw) {
        /* dw[o][c][ky][kx] += sum g[o][oy][ox] x[c][oy - p + ky][ox - p + kx]. One input
         * channel per thread; per image the channel is zero-padded once, then tiles of Q
         * output channels x E ky x U kx taps (dw_tile) accumulate over all rows in
         * registers of 16 lanes (lane = ox mod 16; the ragged end of a row in a scalar),
         * added up over the images in double; then the lanes in order: a fixed order. */
        int E, U;
        dw_tiling(k, &E, &U);
        const int kk = k * k, kry = (k + E - 1) / E * E, krx = (k + U - 1) / U * U;
        const int Hp = Ho + kry - 1;      /* the ky tiles may overrun k */
        const int len = Wo + krx + LANES; /* padded row, x[ix] at ix + p; the kx tiles may overrun k */
#pragma omp parallel
        {
            /* on the heap, not an OpenMP thread's stack */
            v8d *lanes = aligned_alloc(sizeof(v8d), 2 * sizeof(v8d) * (size_t)(O * kk));
            double *tails = malloc(sizeof(double) * (size_t)(O * kk));
            float *xp = malloc(sizeof(float) * (size_t)Hp * len);
            if (!lanes || !tails || !xp) abort(); /* no way to report from inside a kernel */
#pragma omp for schedule(static)
            for (int c = 0; c < C; c++) {
                for (int t = 0; t < O * kk; t++) lanes[2 * t] = lanes[2 * t + 1] = (v8d){0}, tails[t] = 0;
                for (int i = 0; i < s->B; i++) {
                    for (int r = 0; r < Hp; r++) {
                        float *row = xp + (size_t)r * len;
                        const int iy = r - p;
                        if (iy < 0 || iy >= H) {
                            memset(row, 0, sizeof(float) * (size_t)len);
                            continue;
                        }
                        const int n = W < len - p ? W : len - p;
                        pad_row(row, len, x + (((size_t)i * C + c) * H + iy) * W, n, p);
                    }
                    const float *gi = g + (size_t)i * O * Ho * Wo;
                    for (int ky0 = 0; ky0 < kry; ky0 += E)
                        for (int kx0 = 0; kx0 < krx; kx0 += U) {
                            /* Q, E and U literal in every call (see s1_row) */
#define DW_TILE(Q, E_, U_) \
    for (int o0 = 0; o0 < O; o0 += Q) dw_tile(Q, E_, U_, xp, len, gi, O, Ho, Wo, k, o0, ky0, kx0, lanes, tails)
                            switch (U) {
                            case 7: DW_TILE(2, 1, 7); break;
                            case 5: DW_TILE(4, 1, 5); break;
                            case 1: DW_TILE(8, 1, 1); break;
                            default: DW_TILE(3, 3, 3); break;
                            }
#undef DW_TILE
                        }
                }
                for (int o = 0; o < O; o++)
                    for (int t = 0; t < kk; t++) {
                        double a[LANES], sum = 0;
                        memcpy(a, &lanes[2 * (o * kk + t)], sizeof a);
                        for (int l = 0; l < LANES; l++) sum += a[l];
                        dw[((size_t)o * C + c) * kk + t] += (float)(sum + tails[o * kk + t]);
                    }
            }
            free(lanes);
            free(tails);
            free(xp);
        }
    }
}

#pragma GCC pop_options

/* ------------------------------------------------------------------------------------ */
/* direct stride-2 3x3 conv2d on few input channels (shape.direct 3): the encoders' first
 * conv (3 -> 32 channels, 64x64 -> 32x32). On the GEMM path its K = C k k = 27 is short: the
 * im2col matrix, the (O, n) result copied into (B, O, Ho, Wo) with the bias, dy copied into
 * the GEMM's layout and im2col again for dw moved more bytes than the multiply-adds take. */

/* h[a, len) = 0 by vector stores from the end (gcc makes the plain loop a memset call, which
 * costs more than the 16 to 40 floats) */
static inline void s2_zero(float *h, int a, int len) {
    if (len - a < 16) {
        for (int e = a; e < len; e++) h[e] = 0;
        return;
    }
    for (int e = len - 16;; e -= 16) {
        if (e < a) e = a;
        *(v16u *)(h + e) = (v16){0};
        if (e == a) break;
    }
}

/* padded rows [r0, r1) of image i, all C channels, split into sp (C, Hp, 2, len): zeros
 * outside the image. Input column ix lands in half (ix + p) & 1 at (ix + p) >> 1: the even
 * columns of the input row in one half from offset o0, the odd ones in the other from o1;
 * 32 input floats at a time become 16 of each by two shuffles. */
static void s2_split(float *sp, cat_in x, int C, int H, int W, int p, int i, int r0, int r1,
                     int Hp, int len) {
    const int o0 = p >> 1, o1 = (p + 1) >> 1;
    /* input columns read: those landing before len in their half */
    const int n = W < 2 * len - p ? W : 2 * len - p, ne = (n + 1) / 2, no = n / 2;
    for (int c = 0; c < C; c++) {
        const float *xp = in_plane(x, C, (size_t)H * W, i, c);
        for (int r = r0; r < r1; r++) {
            float *ev = sp + ((size_t)c * Hp + r) * 2 * len, *od = ev + len;
            const int iy = r - p;
            if (iy < 0 || iy >= H) {
                memset(ev, 0, sizeof(float) * 2 * (size_t)len);
                continue;
            }
            const float *src = xp + (size_t)iy * W;
            float *h0 = p & 1 ? od : ev, *h1 = p & 1 ? ev : od; /* halves of ix even, odd */
            for (int j = 0; j < o0; j++) h0[j] = 0;
            for (int j = 0; j < o1; j++) h1[j] = 0;
            int j = 0;
            for (; 2 * j + 32 <= n; j += 16) {
                const v16 a = *(const v16u *)(src + 2 * j), b = *(const v16u *)(src + 2 * j + 16);
                *(v16u *)(h0 + o0 + j) = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                                 20, 22, 24, 26, 28, 30);
                *(v16u *)(h1 + o1 + j) = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19,
                                                                 21, 23, 25, 27, 29, 31);
            }
            for (int e = j; e < ne; e++) h0[o0 + e] = src[2 * e];
            for (int e = j; e < no; e++) h1[o1 + e] = src[2 * e + 1];
            s2_zero(h0, o0 + ne, len);
            s2_zero(h1, o1 + no, len);
        }
    }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast") /* FMAs, as in the stride-1 kernels above */

typedef int s2_v16i __attribute__((vector_size(64)));

/* One output row oy of image i (y_i: its O planes) from the image's split rows: blocks of OB
 * channels x NV vectors accumulate in registers over the C 3 rows x 3 taps, then get the
 * bias and the activation and are stored into y. OB and NV literal where inlined (s1_row). */
static inline __attribute__((always_inline)) void
s2_row(const int OB, const int NV, const float *sp, int C, int Hp, int len, float *y_i, int O, int Ho,
       int Wo, int oy, int Opad, const float *wt, const float *bias, ml_conv_act act) {
    const int BW = 16 * NV;
    for (int o0 = 0; o0 < O; o0 += OB)
        for (int j0 = 0; j0 < Wo; j0 += BW) {
            v16 acc[S2_OB16][2];
#pragma GCC unroll 16
            for (int q = 0; q < OB; q++)
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++) acc[q][v] = (v16){0};
            for (int t = 0; t < C * 3; t++) { /* t = c 3 + ky */
                const float *ev = sp + ((size_t)(t / 3) * Hp + 2 * oy + t % 3) * 2 * len + j0;
                const float *wr = wt + (size_t)t * 3 * Opad + o0;
#pragma GCC unroll 3
                for (int kx = 0; kx < 3; kx++) {
                    const float *r = kx == 1 ? ev + len : ev + kx / 2;
                    v16 xv[2];
#pragma GCC unroll 2
                    for (int v = 0; v < NV; v++) xv[v] = *(const v16u *)(r + 16 * v);
#pragma GCC unroll 16
                    for (int q = 0; q < OB; q++) {
                        const float wv = wr[kx * Opad + q];
#pragma GCC unroll 2
                        for (int v = 0; v < NV; v++) acc[q][v] += wv * xv[v];
                    }
                }
            }
            const int je = Wo - j0 < BW ? Wo - j0 : BW;
            for (int q = 0; q < OB && o0 + q < O; q++) {
                float *dst = y_i + ((size_t)(o0 + q) * Ho + oy) * Wo + j0;
                const float bv = bias ? bias[o0 + q] : 0.0f;
                if (je == BW && act != ML_CONV_ACT_SIGMOID) {
#pragma GCC unroll 2
                    for (int v = 0; v < NV; v++) {
                        v16 a = acc[q][v] + bv;
                        if (act == ML_CONV_ACT_RELU) a = (v16)((s2_v16i)a & (a > 0)); /* all-ones where positive */
                        *(v16u *)(dst + 16 * v) = a;
                    }
                } else { /* a ragged end of the row, or the sigmoid */
                    float a[32];
                    memcpy(a, acc[q], sizeof(float) * 16 * (size_t)NV);
                    for (int j = 0; j < je; j++) dst[j] = act_fwd(act, a[j] + bv);
                }
            }
        }
}

/* the sum of v's 16 lanes in a fixed tree */
static inline float s2_hsum(v16 a) {
    a += __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    a += __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    return a[0] + a[1];
}

/* The next image's planes (its dy, then its x channels), prefetched into L2 a few lines at a
 * time while the current image's dw is computed: the bias sums and the split of that image
 * then read from L2, not memory */
#ifndef S2_PF_LINES
#define S2_PF_LINES 4 /* lines per row of a dw tile */
#endif
typedef struct s2_pf {
    const float *at[1 + S2_MAX_C];
    size_t lines[1 + S2_MAX_C];
    int k, nr;
} s2_pf;
static inline void s2_pf_step(s2_pf *f, int m) {
    for (; m > 0 && f->k < f->nr; m--) {
        __builtin_prefetch(f->at[f->k], 0, 2);
        f->at[f->k] += 16;
        if (--f->lines[f->k] == 0) f->k++;
    }
}

/*
 * dw of one image, one input channel c, output channels o0 .. o0 + S2_Q - 1 (past O: computed
 * on a valid plane and dropped), all 9 taps: pw[(o C + c) 9 + ky 3 + kx] = the sum over rows
 * oy and columns ox of g[o][oy][ox] x_pad[c][2 oy + ky][2 ox + kx]. The 27 accumulators of 16
 * lanes (lane = ox mod 16) stay in registers over the image's rows; each g load feeds 9 FMAs,
 * each x load 3. g has rows of ldg floats, zeros past Wo (Wv = ldg columns are read).
 */
static inline void s2_dw_tile(const float *sp_c, int len, const float *g, int ldg, int O, int C, int c,
                              int Ho, int o0, float *pw, s2_pf *pf) {
    v16 acc[S2_Q][9];
#pragma GCC unroll 3
    for (int q = 0; q < S2_Q; q++)
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) acc[q][t] = (v16){0};
    const float *gq[S2_Q];
    for (int q = 0; q < S2_Q; q++) gq[q] = g + (size_t)(o0 + q < O ? o0 + q : o0) * Ho * ldg;
    const float *xr = sp_c;
    for (int oy = 0; oy < Ho; oy++, xr += 4 * (size_t)len) {
        for (int j = 0; j < ldg; j += 16) {
            v16 gv[S2_Q];
#pragma GCC unroll 3
            for (int q = 0; q < S2_Q; q++) gv[q] = *(const v16u *)(gq[q] + j);
#pragma GCC unroll 3
            for (int ky = 0; ky < 3; ky++)
#pragma GCC unroll 3
                for (int kx = 0; kx < 3; kx++) {
                    v16 xv = *(const v16u *)(xr + (size_t)ky * 2 * len + (kx == 1 ? len : kx / 2) + j);
#if defined(__AVX512F__) /* one load for the S2_Q FMAs (see dw_tile) */
                    __asm__("" : "+v"(xv));
#endif
#pragma GCC unroll 3
                    for (int q = 0; q < S2_Q; q++) acc[q][ky * 3 + kx] += gv[q] * xv;
                }
        }
        for (int q = 0; q < S2_Q; q++) gq[q] += ldg;
        s2_pf_step(pf, S2_PF_LINES);
    }
    for (int q = 0; q < S2_Q && o0 + q < O; q++)
        for (int t = 0; t < 9; t++) pw[((size_t)(o0 + q) * C + c) * 9 + t] = s2_hsum(acc[q][t]);
}

/* Work items of the forward: images, or when they do not share out evenly among the threads,
 * nt / gcd(B, nt) row blocks of every image (as s1_conv) */
static int s2_row_blocks(int B, int Ho) {
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    int g = B;
    for (int a = nt; a;) {
        const int r = g % a;
        g = a, a = r;
    }
    return nt / g <= Ho ? nt / g : Ho;
}

/* y = act(conv2d(x, w) + b) for direct 3 and 4; wt: C 9 s2_padded floats of the workspace */
static void s2_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w, const float *b,
                       float *wt) {
    const int C = s->C, H = s->H, W = s->W, O = s->O, Ho = s->Ho, Wo = s->Wo, p = s->pad;
    const int Opad = s2_padded(O, Wo), Hp = s2_rows(Ho), len = s2_len(Wo);
    for (int t = 0; t < C * 9; t++) /* wt[t][o] = w[o][t], t = (c 3 + ky) 3 + kx */
        for (int o = 0; o < Opad; o++) wt[(size_t)t * Opad + o] = o < O ? w[(size_t)o * C * 9 + t] : 0.0f;
    const int nblk = s2_row_blocks(s->B, Ho), nv = s2_nv(Wo);
#pragma omp parallel
    {
        float *sp = malloc(sizeof(float) * s2_split_floats(C, Ho, Wo)); /* not on a thread's stack */
        if (!sp) abort(); /* no way to report from inside a kernel */
#pragma omp for schedule(static)
        for (int it = 0; it < s->B * nblk; it++) {
            const int i = it / nblk, oy0 = it % nblk * Ho / nblk, oy1 = (it % nblk + 1) * Ho / nblk;
            s2_split(sp, x, C, H, W, p, i, 2 * oy0, 2 * oy1 + 1, Hp, len);
            float *y_i = y + (size_t)i * O * Ho * Wo;
            for (int oy = oy0; oy < oy1; oy++) {
                if (nv == 1) s2_row(S2_OB16, 1, sp, C, Hp, len, y_i, O, Ho, Wo, oy, Opad, wt, b, s->act);
                else s2_row(S2_OB, 2, sp, C, Hp, len, y_i, O, Ho, Wo, oy, Opad, wt, b, s->act);
            }
        }
        free(sp);
    }
}

/*
 * dw and db of direct 3 (dx is the GEMM path's): the images split over the threads, each
 * image's dw computed whole by one thread into its own partial (the workspace's (B, O C 9)),
 * whose 16 lanes are summed in a fixed tree; then the partials added over the images in
 * double in image order, as bias_finish does db's. So dw and db are the same bits whatever
 * the thread count. dy is read in place when it needs no activation undone and its rows are
 * whole vectors, else copied per image (with act_bwd) into rows padded with zeros.
 */
static void s2_backward(const ml_conv_shape *s, float *dw, float *db, const float *dy, const float *y,
                        cat_in x, float *pw, float *part) {
    const int B = s->B, C = s->C, O = s->O, Ho = s->Ho, Wo = s->Wo;
    const int Hp = s2_rows(Ho), len = s2_len(Wo), ldg = s2_ldg(Wo);
    const size_t HWo = (size_t)Ho * Wo, nw = (size_t)O * C * 9;
    const int copy = s->act != ML_CONV_ACT_NONE || ldg != Wo;
    assert(C <= S2_MAX_C);
#pragma omp parallel
    {
        float *sp = dw ? malloc(sizeof(float) * s2_split_floats(C, Ho, Wo)) : NULL;
        float *gb = dw && copy ? malloc(sizeof(float) * (size_t)O * Ho * ldg) : NULL;
        if ((dw && !sp) || (dw && copy && !gb)) abort(); /* no way to report from inside a kernel */
#pragma omp for schedule(static)
        for (int i = 0; i < B; i++) {
            const float *dyi = dy + (size_t)i * O * HWo, *yi = y ? y + (size_t)i * O * HWo : NULL;
            if (db)
                for (int o = 0; o < O; o++)
                    part[(size_t)i * O + o] = act_bwd_sum(s->act, dyi + o * HWo, yi ? yi + o * HWo : NULL, HWo);
            if (!dw) continue;
            const float *g = dyi;
            if (copy) {
                for (int o = 0; o < O; o++)
                    for (int oy = 0; oy < Ho; oy++) {
                        float *d = gb + ((size_t)o * Ho + oy) * ldg;
                        const size_t off = o * HWo + (size_t)oy * Wo;
                        for (int j = 0; j < Wo; j++) d[j] = act_bwd(s->act, dyi[off + j], yi ? yi[off + j] : 0);
                        for (int j = Wo; j < ldg; j++) d[j] = 0;
                    }
                g = gb;
            }
            s2_split(sp, x, C, s->H, s->W, s->pad, i, 0, Hp, Hp, len);
            s2_pf pf = {.k = 0, .nr = 0};
            if (i + 1 < B) {
                pf.at[0] = dy + (size_t)(i + 1) * O * HWo, pf.lines[0] = (size_t)O * HWo / 16;
                for (int c = 0; c < C; c++)
                    pf.at[1 + c] = in_plane(x, C, (size_t)s->H * s->W, i + 1, c),
                              pf.lines[1 + c] = (size_t)s->H * s->W / 16;
                pf.nr = 1 + C; /* C <= S2_MAX_C (ml_conv2d_shape) */
                while (pf.k < pf.nr && pf.lines[pf.k] == 0) pf.k++;
            }
            for (int c = 0; c < C; c++)
                for (int o0 = 0; o0 < O; o0 += S2_Q)
                    s2_dw_tile(sp + (size_t)c * Hp * 2 * len, len, g, ldg, O, C, c, Ho, o0, pw + (size_t)i * nw,
                               &pf);
        }
        free(sp);
        free(gb);
    }
    if (dw)
#pragma omp parallel for schedule(static)
        for (size_t t = 0; t < nw; t++) {
            double acc = 0;
            for (int i = 0; i < B; i++) acc += pw[(size_t)i * nw + t];
            dw[t] += (float)acc;
        }
    if (db) bias_finish(db, part, B, O);
}

#pragma GCC pop_options /* the OpenMP regions above are outlined with their function's options */

/* ------------------------------------------------------------------------------------ */
/* conv2d */

/* x is one buffer whenever s->direct is set (the direct kernels read it in place) */
static void conv2d_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w,
                           const float *b, float *ws) {
    const int B = s->B, C = s->C, O = s->O, k = s->k;
    const size_t HWo = (size_t)s->Ho * s->Wo;
    const int K = C * k * k;
    if (s->direct == 3 || s->direct == 4) {
        s2_forward(s, y, x, w, b, ws);
        return;
    }
    if (s->direct) { /* 1 or 2 */
        direct_forward(s, y, x, w, b, ws);
        return;
    }
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * HWo;
        float *col = ws, *yt = ws + (size_t)K * n;
        im2col(col, x, i0, nb, C, s->H, s->W, s->Ho, s->Wo, k, s->stride, s->pad);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, O, (int)n, K, 1.0f, w, K, col,
                    (int)n, 0.0f, yt, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < nb; i++)
            for (int o = 0; o < O; o++) {
                const float *src = yt + (size_t)o * n + (size_t)i * HWo;
                float *dst = y + ((size_t)(i0 + i) * O + o) * HWo;
                const float bias = b ? b[o] : 0.0f;
                for (size_t j = 0; j < HWo; j++) dst[j] = act_fwd(s->act, src[j] + bias);
            }
    }
}

/* wt (C, O kk) from w (O, C, kk): wt[c][o kk + t] = w[o][c][t] (the flip is im2col's) */
static void transpose_kernel(float *wt, const float *w, int O, int C, int kk) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        for (int o = 0; o < O; o++) {
            const float *src = w + ((size_t)o * C + c) * kk;
            float *dst = wt + ((size_t)c * O + o) * kk;
#pragma omp simd
            for (int t = 0; t < kk; t++) dst[t] = src[t];
        }
}

/* dx: written (acc 0) or accumulated; one buffer, as x, whenever s->direct is set */
static void conv2d_backward(const ml_conv_shape *s, cat_out dx, float *dw, float *db,
                            const float *dy, const float *y, cat_in x, const float *w, float *ws) {
    const int B = s->B, C = s->C, O = s->O, k = s->k;
    const size_t HW = (size_t)s->H * s->W, HWo = (size_t)s->Ho * s->Wo;
    const int K = C * k * k;
    const ml_conv_act act = s->act;
    float *part = ws + layer_workspace(s); /* (B, O) bias partials */
    if (s->direct == 3) { /* dw, db by the direct kernel; dx, if wanted, on the GEMM path below */
        if (dw || db) s2_backward(s, dw, db, dy, y, x, ws, part);
        if (!dx.a) return;
        dw = NULL, db = NULL;
    }
    if (db && (s->direct == 1 || (!dw && !dx.a))) bias_backward(db, dy, y, act, B, O, HWo, part);
    if (!dw && !dx.a) return;
    const int flip = dx.a && s->direct != 1 && dx_as_conv(s);
    float *wt = ws + col_rows(s) * (size_t)s->chunk * HWo + (size_t)(C > O ? C : O) * s->chunk * HWo;
    if (flip && k > 1) transpose_kernel(wt, w, O, C, k * k);
    if (s->direct == 1) {
        const float *g = dy;
        if (act != ML_CONV_ACT_NONE) {
            const size_t m = ml_conv_out_size(s);
#pragma omp parallel for schedule(static)
            for (size_t j = 0; j < m; j++) ws[j] = act_bwd(act, dy[j], y[j]);
            g = ws;
        }
        direct_backward(s, dx.a, dw, g, x.a, w, ws + ml_conv_out_size(s));
        return;
    }
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * HWo;
        float *col = ws, *dyt = ws + (size_t)K * n;
        /* dyt (O, n): the chunk's pre-activation output gradient, channels side by side; the
         * bias gradient's partials are summed from it while it is in cache */
#pragma omp parallel for collapse(2) schedule(static)
        for (int o = 0; o < O; o++)
            for (int i = 0; i < nb; i++) {
                const size_t off = ((size_t)(i0 + i) * O + o) * HWo;
                float *dst = dyt + (size_t)o * n + (size_t)i * HWo;
                if (act == ML_CONV_ACT_NONE)
                    memcpy(dst, dy + off, sizeof(float) * HWo);
                else
                    for (size_t j = 0; j < HWo; j++) dst[j] = act_bwd(act, dy[off + j], y[off + j]);
                if (db) part[(size_t)(i0 + i) * O + o] = act_bwd_sum(ML_CONV_ACT_NONE, dst, NULL, HWo);
            }
        if (dw) {
            im2col(col, x, i0, nb, C, s->H, s->W, s->Ho, s->Wo, k, s->stride, s->pad);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, O, K, (int)n, 1.0f, dyt, (int)n,
                        col, (int)n, 1.0f, dw, K);
        }
        if (dx.a && flip) {
            /* dxt (C, n) = wt (C, O k k) flipped im2col(dyt); for k = 1, w^T dyt */
            float *dxt = k == 1 ? col : dyt;
            if (k == 1) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, (int)n, O, 1.0f, w, C,
                            dyt, (int)n, 0.0f, dxt, (int)n);
            } else {
                im2col_flip(col, (cat_in){dyt, NULL, O, nb}, 0, nb, O, s->Ho, s->Wo, s->H, s->W,
                            k, 1, k - 1 - s->pad, 1);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, (int)n, O * k * k,
                            1.0f, wt, O * k * k, col, (int)n, 0.0f, dxt, (int)n);
            }
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < nb; i++)
                for (int c = 0; c < C; c++) {
                    float *dst = out_plane(dx, C, HW, i0 + i, c);
                    const float *src = dxt + (size_t)c * n + (size_t)i * HW;
                    if (!dx.acc)
                        memcpy(dst, src, sizeof(float) * HW);
                    else
#pragma omp simd
                        for (size_t j = 0; j < HW; j++) dst[j] += src[j];
                }
        } else if (dx.a) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, (int)n, O, 1.0f, w, K, dyt,
                        (int)n, 0.0f, col, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < nb; i++)
                for (int c = 0; c < C; c++) {
                    float *dst = out_plane(dx, C, HW, i0 + i, c);
                    col2im_plane(dst, col + (size_t)c * k * k * n + (size_t)i * HWo, n, s->H,
                                 s->W, s->Ho, s->Wo, k, s->stride, s->pad, dx.acc);
                }
        }
    }
    if (db) bias_finish(db, part, B, O);
}

void ml_conv2d_forward(const ml_conv_shape *s, float *y, const float *x, const float *w,
                       const float *b, float *ws) {
    conv2d_forward(s, y, one_in(x, s->C), w, b, ws);
}

void ml_conv2d_backward(const ml_conv_shape *s, float *dx, float *dw, float *db, const float *dy,
                        const float *y, const float *x, const float *w, float *ws) {
    conv2d_backward(s, (cat_out){dx, NULL, s->C, !s->write_dx}, dw, db, dy, y, one_in(x, s->C),
                    w, ws);
}

void ml_conv2d_forward_cat(const ml_conv_shape *s, int Ca, float *y, const float *xa,
                           const float *xb, const float *w, const float *b, float *ws) {
    assert(s->direct != 1 && Ca > 0 && Ca < s->C);
    conv2d_forward(s, y, (cat_in){xa, xb, Ca, 0}, w, b, ws);
}

void ml_conv2d_backward_cat(const ml_conv_shape *s, int Ca, float *dxa, float *dxb, float *dw,
                            float *db, const float *dy, const float *y, const float *xa,
                            const float *xb, const float *w, float *ws) {
    assert(s->direct != 1 && Ca > 0 && Ca < s->C && (dxa != NULL) == (dxb != NULL));
    conv2d_backward(s, (cat_out){dxa, dxb, Ca, !s->write_dx}, dw, db, dy, y,
                    (cat_in){xa, xb, Ca, 0}, w, ws);
}

/* ------------------------------------------------------------------------------------ */
/* several odd kernels on one input, sharing a ring-ordered column matrix (conv.h) */

/* The taps of a (2R + 1)^2 window in ring order: ring r (max(|dy|, |dx|) = r) holds taps
 * [(2r - 1)^2, (2r + 1)^2), each ring in raster order. */
static void ring_taps(int R, int *dy, int *dx) {
    int t = 0;
    for (int r = 0; r <= R; r++)
        for (int a = -r; a <= r; a++)
            for (int b = -r; b <= r; b++)
                if ((a < 0 ? -a : a) == r || (b < 0 ? -b : b) == r) dy[t] = a, dx[t] = b, t++;
}
static int ring_begin(int r) { return r ? (2 * r - 1) * (2 * r - 1) : 0; }

/* branch indices by kernel size, largest first (stable), and the largest radius */
static int mconv_order(const ml_mconv_shape *s, int *order) {
    for (int j = 0; j < s->n; j++) order[j] = j;
    for (int a = 1; a < s->n; a++)
        for (int b = a; b > 0 && s->k[order[b]] > s->k[order[b - 1]]; b--) {
            int t = order[b];
            order[b] = order[b - 1], order[b - 1] = t;
        }
    return s->k[order[0]] / 2;
}

/* branches (a prefix of the order) whose kernels reach ring r */
static int mconv_reach(const ml_mconv_shape *s, const int *order, int r) {
    int m = 0;
    while (m < s->n && s->k[order[m]] / 2 >= r) m++;
    return m;
}

/* floats of the stacked ring weights: the sum of the branches' weights */
static size_t mconv_wfloats(const ml_mconv_shape *s) {
    size_t t = 0;
    for (int j = 0; j < s->n; j++) t += (size_t)s->O * s->C * s->k[j] * s->k[j];
    return t;
}

int ml_mconv_shape_init(ml_mconv_shape *s, int B, int C, int H, int W, int O, int n, const int *k,
                        ml_conv_act act) {
    if (n < 1 || n > ML_MCONV_MAX) return ml_errorf("mconv: 1..%d branches expected, got %d", ML_MCONV_MAX, n);
    *s = (ml_mconv_shape){.B = B, .C = C, .H = H, .W = W, .O = O, .n = n, .act = act};
    int kmax = 1, direct = 0;
    for (int j = 0; j < n; j++) {
        if (k[j] < 1 || k[j] % 2 == 0 || k[j] > ML_MCONV_MAX_K)
            return ml_errorf("mconv: kernel %d of branch %d is not odd in 1..%d", k[j], j, ML_MCONV_MAX_K);
        s->k[j] = k[j];
        if (ml_conv2d_shape(&s->br[j], B, C, H, W, O, k[j], 1, k[j] / 2, act)) return ML_ERR;
        direct |= s->br[j].direct != 0;
        if (k[j] > kmax) kmax = k[j];
    }
    /* the rings save (sum k_j^2 - kmax^2) C rows of im2col and packing per pixel, and cost a
     * repacking of the weights (O C sum k_j^2 floats) forward and backward: they pay when the
     * batch has more pixels than there are channels (the texture expert on 8x8 maps, 11
     * images: forward 1.4x, backward 1.15x as fast; on 4x4 maps of 256 channels, 10 images,
     * 10% slower) */
    s->rings = !direct && (size_t)(H + kmax - 1) * (size_t)(W + kmax - 1) <= IM2COL_PAD_MAX &&
               (size_t)B * H * W >= (size_t)C;
    const size_t per = (size_t)kmax * kmax * C * H * W;
    size_t c = COL_TARGET_FLOATS / per;
    s->chunk = c < 1 ? 1 : c > (size_t)B ? B : (int)c;
    return ML_OK;
}

size_t ml_mconv_workspace_floats(const ml_mconv_shape *s) {
    size_t br = 0;
    for (int j = 0; j < s->n; j++) {
        size_t w = ml_conv_workspace_floats(&s->br[j]);
        if (w > br) br = w;
    }
    if (!s->rings) return br;
    int order[ML_MCONV_MAX];
    const int R = mconv_order(s, order), kmax = 2 * R + 1;
    const size_t n = (size_t)s->chunk * s->H * s->W;
    const size_t chunk = ((size_t)kmax * kmax * s->C + (size_t)s->n * s->O) * n; /* col, Y */
    return 2 * mconv_wfloats(s) + (chunk > br ? chunk : br);
}

/* col ((kmax^2 C), n): row t C + c holds channel c seen through ring-ordered tap t */
static void im2col_rings(float *col, const float *x, int i0, int nb, int C, int H, int W, int R,
                         const int *tdy, const int *tdx) {
    const size_t HW = (size_t)H * W, ncol = (size_t)nb * HW;
    const int PH = H + 2 * R, PW = W + 2 * R, T = (2 * R + 1) * (2 * R + 1);
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < nb; i++) {
            float pad[IM2COL_PAD_MAX];
            const float *xp = x + ((size_t)(i0 + i) * C + c) * HW;
            for (int r = 0; r < PH; r++) {
                float *d = pad + (size_t)r * PW;
                const int iy = r - R;
                for (int j = 0; j < PW; j++) d[j] = 0;
                if (iy >= 0 && iy < H) memcpy(d + R, xp + (size_t)iy * W, sizeof(float) * (size_t)W);
            }
            for (int t = 0; t < T; t++) {
                float *o = col + ((size_t)t * C + c) * ncol + (size_t)i * HW;
                const float *src = pad + (size_t)(R + tdy[t]) * PW + R + tdx[t];
                switch (W) {
                case 4: copy_block(o, src, H, 4, PW, 1); break;
                case 8: copy_block(o, src, H, 8, PW, 1); break;
                case 16: copy_block(o, src, H, 16, PW, 1); break;
                default: copy_block(o, src, H, W, PW, 1); break;
                }
            }
        }
}

/* The stacked weights of ring r: row (jj O + o) for the jj-th branch of the order, column
 * (t - ring_begin(r)) C + c. to_w 0: wr from the branches' w; 1: the branches' dw += wr.
 * Per (branch, o), channels outer: each (o, c) kernel is read or updated in one place while
 * the row, a few thousand floats, stays in the cache. */
static void mconv_pack(const ml_mconv_shape *s, const int *order, int R, const int *tdy, const int *tdx,
                       float *wr, float *const *dw, const float *const *w, int to_w) {
    const int C = s->C, O = s->O;
    size_t off = 0;
    for (int r = 0; r <= R; r++) {
        const int m = mconv_reach(s, order, r), t0 = ring_begin(r), t1 = (2 * r + 1) * (2 * r + 1);
        const size_t K = (size_t)(t1 - t0) * C;
#pragma omp parallel for collapse(2) schedule(static)
        for (int jj = 0; jj < m; jj++)
            for (int o = 0; o < O; o++) {
                const int j = order[jj], k = s->k[j], rho = k / 2, kk = k * k;
                int toff[ML_MCONV_MAX_K * ML_MCONV_MAX_K];
                for (int t = t0; t < t1; t++) toff[t - t0] = (rho + tdy[t]) * k + rho + tdx[t];
                float *row = wr + off + ((size_t)jj * O + o) * K;
                for (int c = 0; c < C; c++) {
                    const size_t base = ((size_t)o * C + c) * kk;
                    if (to_w) {
                        float *d = dw[j] + base;
                        for (int t = 0; t < t1 - t0; t++) d[toff[t]] += row[(size_t)t * C + c];
                    } else {
                        const float *src = w[j] + base;
                        for (int t = 0; t < t1 - t0; t++) row[(size_t)t * C + c] = src[toff[t]];
                    }
                }
            }
        off += (size_t)m * O * K;
    }
}

void ml_mconv_forward(const ml_mconv_shape *s, float *const *y, const float *x,
                      const float *const *w, const float *const *b, float *ws) {
    if (!s->rings) {
        for (int j = 0; j < s->n; j++) ml_conv2d_forward(&s->br[j], y[j], x, w[j], b ? b[j] : NULL, ws);
        return;
    }
    int order[ML_MCONV_MAX], tdy[ML_MCONV_MAX_K * ML_MCONV_MAX_K], tdx[ML_MCONV_MAX_K * ML_MCONV_MAX_K];
    const int R = mconv_order(s, order), C = s->C, O = s->O, B = s->B;
    const size_t HW = (size_t)s->H * s->W;
    ring_taps(R, tdy, tdx);
    float *wr = ws, *col = ws + 2 * mconv_wfloats(s);
    mconv_pack(s, order, R, tdy, tdx, wr, NULL, w, 0);
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * HW;
        const int T = (2 * R + 1) * (2 * R + 1);
        float *yt = col + (size_t)T * C * n; /* (branches in order x O, n) */
        im2col_rings(col, x, i0, nb, C, s->H, s->W, R, tdy, tdx);
        size_t off = 0;
        for (int r = 0; r <= R; r++) {
            const int m = mconv_reach(s, order, r), t0 = ring_begin(r), t1 = (2 * r + 1) * (2 * r + 1);
            const int K = (t1 - t0) * C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m * O, (int)n, K, 1.0f, wr + off, K,
                        col + (size_t)t0 * C * n, (int)n, r ? 1.0f : 0.0f, yt, (int)n);
            off += (size_t)m * O * K;
        }
#pragma omp parallel for collapse(3) schedule(static)
        for (int jj = 0; jj < s->n; jj++)
            for (int i = 0; i < nb; i++)
                for (int o = 0; o < O; o++) {
                    const int j = order[jj];
                    const float *src = yt + ((size_t)jj * O + o) * n + (size_t)i * HW;
                    float *dst = y[j] + ((size_t)(i0 + i) * O + o) * HW;
                    const float bias = b && b[j] ? b[j][o] : 0.0f;
                    if (s->act == ML_CONV_ACT_RELU)
#pragma omp simd
                        for (size_t q = 0; q < HW; q++) {
                            const float v = src[q] + bias;
                            dst[q] = v > 0 ? v : 0.0f;
                        }
                    else
                        for (size_t q = 0; q < HW; q++) dst[q] = act_fwd(s->act, src[q] + bias);
                }
    }
}

void ml_mconv_backward(const ml_mconv_shape *s, float *dx, float *const *dw, float *const *db,
                       const float *const *dy, const float *const *y, const float *x,
                       const float *const *w, float *ws) {
    if (s->rings && dw) {
        int order[ML_MCONV_MAX], tdy[ML_MCONV_MAX_K * ML_MCONV_MAX_K], tdx[ML_MCONV_MAX_K * ML_MCONV_MAX_K];
        const int R = mconv_order(s, order), C = s->C, O = s->O, B = s->B;
        const size_t HW = (size_t)s->H * s->W;
        ring_taps(R, tdy, tdx);
        float *dwr = ws + mconv_wfloats(s), *col = ws + 2 * mconv_wfloats(s);
        for (int i0 = 0; i0 < B; i0 += s->chunk) {
            const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
            const size_t n = (size_t)nb * HW;
            const int T = (2 * R + 1) * (2 * R + 1);
            float *g = col + (size_t)T * C * n; /* pre-activation gradient, rows as yt */
#pragma omp parallel for collapse(3) schedule(static)
            for (int jj = 0; jj < s->n; jj++)
                for (int i = 0; i < nb; i++)
                    for (int o = 0; o < O; o++) {
                        const int j = order[jj];
                        const size_t off = ((size_t)(i0 + i) * O + o) * HW;
                        float *dst = g + ((size_t)jj * O + o) * n + (size_t)i * HW;
                        if (s->act == ML_CONV_ACT_NONE)
                            memcpy(dst, dy[j] + off, sizeof(float) * HW);
                        else if (s->act == ML_CONV_ACT_RELU)
#pragma omp simd
                            for (size_t q = 0; q < HW; q++) dst[q] = y[j][off + q] > 0 ? dy[j][off + q] : 0.0f;
                        else
                            for (size_t q = 0; q < HW; q++) dst[q] = act_bwd(s->act, dy[j][off + q], y[j][off + q]);
                    }
            im2col_rings(col, x, i0, nb, C, s->H, s->W, R, tdy, tdx);
            size_t off = 0;
            for (int r = 0; r <= R; r++) {
                const int m = mconv_reach(s, order, r), t0 = ring_begin(r), t1 = (2 * r + 1) * (2 * r + 1);
                const int K = (t1 - t0) * C;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m * O, K, (int)n, 1.0f, g, (int)n,
                            col + (size_t)t0 * C * n, (int)n, i0 ? 1.0f : 0.0f, dwr + off, K);
                off += (size_t)m * O * K;
            }
        }
        mconv_pack(s, order, R, tdy, tdx, dwr, dw, NULL, 1);
        dw = NULL; /* done: the branches below add dx and db only */
    }
    for (int j = 0; j < s->n; j++)
        ml_conv2d_backward(&s->br[j], dx, dw ? dw[j] : NULL, db ? db[j] : NULL, dy[j], y[j], x, w[j], ws);
}

/* ------------------------------------------------------------------------------------ */
/* transposed conv2d: the adjoint of conv2d with the roles of x and y swapped, so its
 * forward is GEMM + col2im and its backward im2col + two GEMMs. */

/*
 * Sub-pixel form of the kernel-4, stride-2, padding-1 transposed convolution (every SRNN
 * decoder block). Output pixel (oy, ox) = (2m + py, 2n + px) receives input rows m - 1 + py
 * and m + py (kernel rows ky = 3 - py - 2 ty for tap ty = 0, 1) and likewise columns, so
 * each of the 4 phases p = 2 py + px is a 2x2 stride-1 convolution of x with a 2x2 slice
 * of the kernel, and the 4 slices tile the 16 taps. All phases read the same 2x2 windows
 * of x (zero-padded by 1), only shifted by (py, px): with col = im2col_2x2(x) over the
 * (H + 1) x (W + 1) window positions (4C rows, c-major: row 4c + 2ty + tx),
 *   Yt (4O, n) = Wp (4O, 4C) col (4C, n),   Wp[p O + o][4c + t] = w[c][o][ky][kx],
 * is ONE GEMM with K = 4C (the general path's has K = C), no overlapping col2im scatter,
 * and phase p of output (m, n) is Yt[p O + o] at window (m + py, n + px). 1 + 1/H extra
 * columns per row and image are computed and dropped. Backward is the adjoint:
 *   G (4O, n) = the pre-activation gradient gathered to those positions (0 elsewhere),
 *   dWp += G col^T,   dcol = Wp^T G,   dx += col2im_2x2(dcol).
 */
static void sp_tap(int p, int t, int *ky, int *kx) {
    const int py = p >> 1, px = p & 1, ty = t >> 1, tx = t & 1;
    *ky = 3 - py - 2 * ty;
    *kx = 3 - px - 2 * tx;
}

/* col2im_plane for the 2x2 windows, in one pass: dx[iy][ix] += (acc) or = the 4 taps'
 * columns at window (iy + 1 - ty, ix + 1 - tx), added in tap order as col2im_plane does */
static void sp_col2im(float *dx, const float *col, size_t n, int H, int W, int acc) {
    const int W1 = W + 1;
    const float *c0 = col, *c1 = col + n, *c2 = col + 2 * n, *c3 = col + 3 * n;
    for (int iy = 0; iy < H; iy++) {
        float *d = dx + (size_t)iy * W;
        const float *a = c0 + (size_t)(iy + 1) * W1 + 1, *b = c1 + (size_t)(iy + 1) * W1;
        const float *e = c2 + (size_t)iy * W1 + 1, *f = c3 + (size_t)iy * W1;
        if (acc)
#pragma omp simd
            for (int ix = 0; ix < W; ix++) d[ix] = d[ix] + a[ix] + b[ix] + e[ix] + f[ix];
        else
#pragma omp simd
            for (int ix = 0; ix < W; ix++) d[ix] = a[ix] + b[ix] + e[ix] + f[ix];
    }
}

/* wp (4O, 4C) from w (C, O, 4, 4) */
static void sp_pack(float *wp, const float *w, int C, int O) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < O; o++)
            for (int c = 0; c < C; c++)
                for (int t = 0; t < 4; t++) {
                    int ky, kx;
                    sp_tap(p, t, &ky, &kx);
                    wp[((size_t)p * O + o) * 4 * C + 4 * c + t] = w[(((size_t)c * O + o) * 4 + ky) * 4 + kx];
                }
}

/* dw (C, O, 4, 4) += dwp (4O, 4C) */
static void sp_unpack_add(float *dw, const float *dwp, int C, int O) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        for (int o = 0; o < O; o++)
            for (int p = 0; p < 4; p++)
                for (int t = 0; t < 4; t++) {
                    int ky, kx;
                    sp_tap(p, t, &ky, &kx);
                    dw[(((size_t)c * O + o) * 4 + ky) * 4 + kx] += dwp[((size_t)p * O + o) * 4 * C + 4 * c + t];
                }
}

/* One output row of a sub-pixel transposed conv: its even columns from phase row s0, its odd
   ones from s1 (each W wide), plus the bias, through the activation. */
static inline void subpixel_row(float *restrict d, const float *s0, const float *s1, int W, float bias,
                                ml_conv_act act) {
    if (act == ML_CONV_ACT_RELU) /* the SRNN case, vectorised */
#pragma omp simd
        for (int q = 0; q < W; q++) {
            const float v0 = s0[q] + bias, v1 = s1[q] + bias;
            d[2 * q] = v0 > 0 ? v0 : 0.0f;
            d[2 * q + 1] = v1 > 0 ? v1 : 0.0f;
        }
    else
        for (int q = 0; q < W; q++) {
            d[2 * q] = act_fwd(act, s0[q] + bias);
            d[2 * q + 1] = act_fwd(act, s1[q] + bias);
        }
}

static void sp_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w,
                       const float *b, float *ws) {
    const int B = s->B, C = s->C, O = s->O, H = s->H, W = s->W, Wo = s->Wo;
    const size_t HWo = (size_t)s->Ho * Wo, P = sp_cols_per_image(s);
    float *wp = ws, *col = ws + (size_t)32 * C * O;
    sp_pack(wp, w, C, O);
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * P;
        float *yt = col + (size_t)4 * C * n;
        im2col(col, x, i0, nb, C, H, W, H + 1, W + 1, 2, 1, 1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 4 * O, (int)n, 4 * C, 1.0f, wp,
                    4 * C, col, (int)n, 0.0f, yt, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < nb; i++)
            for (int o = 0; o < O; o++) {
                float *dst = y + ((size_t)(i0 + i) * O + o) * HWo;
                const float bias = b ? b[o] : 0.0f;
                for (int oy = 0; oy < s->Ho; oy++) {
                    const int py = oy & 1, r = (oy >> 1) + py;
                    /* px = 0 reads window column q, px = 1 column q + 1 */
                    const float *s0 = yt + (size_t)(2 * py * O + o) * n + (size_t)i * P + (size_t)r * (W + 1);
                    const float *s1 = s0 + (size_t)O * n + 1;
                    float *d = dst + (size_t)oy * Wo;
                    subpixel_row(d, s0, s1, W, bias, s->act);
                }
            }
    }
}

/* db, if not NULL, is reduced in the gather (which reads dy and y anyway): per (image,
 * channel) in 16 float lanes over the gathered rows, then over images in double, in order */
static void sp_backward(const ml_conv_shape *s, cat_out dx, float *dw, float *db, const float *dy,
                        const float *y, cat_in x, const float *w, float *ws) {
    const int B = s->B, C = s->C, O = s->O, H = s->H, W = s->W, Wo = s->Wo;
    const size_t HW = (size_t)H * W, HWo = (size_t)s->Ho * Wo, P = sp_cols_per_image(s);
    const ml_conv_act act = s->act;
    float *wp = ws, *dwp = ws + (size_t)16 * C * O, *col = ws + (size_t)32 * C * O;
    float *part = ws + layer_workspace(s); /* (B, O) bias partials */
    if (dx.a) sp_pack(wp, w, C, O);
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * P;
        float *g = col + (size_t)4 * C * n;
        /* G: phase p, channel o, window (r, q) <- output (2 (r - py) + py, 2 (q - px) + px) */
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < nb; i++)
            for (int o = 0; o < O; o++) {
                const size_t off = ((size_t)(i0 + i) * O + o) * HWo;
                float lanes[LANES] = {0};
                for (int p = 0; p < 4; p++) {
                    const int py = p >> 1, px = p & 1;
                    float *gp = g + ((size_t)p * O + o) * n + (size_t)i * P;
                    for (int r = 0; r <= H; r++) {
                        float *gr = gp + (size_t)r * (W + 1);
                        const int m = r - py;
                        if (m < 0 || m >= H) {
                            memset(gr, 0, sizeof(float) * (size_t)(W + 1));
                            continue;
                        }
                        const float *d = dy + off + (size_t)(2 * m + py) * Wo + px;
                        const float *yy = y ? y + off + (size_t)(2 * m + py) * Wo + px : NULL;
                        gr[px ? 0 : W] = 0;
                        float *gq = gr + px;
                        if (act == ML_CONV_ACT_NONE)
#pragma omp simd
                            for (int q = 0; q < W; q++) gq[q] = d[2 * q];
                        else if (act == ML_CONV_ACT_RELU) /* the SRNN case, vectorised */
#pragma omp simd
                            for (int q = 0; q < W; q++) gq[q] = yy[2 * q] > 0 ? d[2 * q] : 0.0f;
                        else
                            for (int q = 0; q < W; q++) gq[q] = act_bwd(act, d[2 * q], yy[2 * q]);
                        if (!db) continue;
                        int q = 0;
                        for (; q + LANES <= W; q += LANES)
#pragma omp simd
                            for (int l = 0; l < LANES; l++) lanes[l] += gq[q + l];
                        for (int l = 0; q < W; q++, l++) lanes[l] += gq[q];
                    }
                }
                float sum = 0;
                for (int l = 0; l < LANES; l++) sum += lanes[l];
                part[(size_t)(i0 + i) * O + o] = sum;
            }
        im2col(col, x, i0, nb, C, H, W, H + 1, W + 1, 2, 1, 1);
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 4 * O, 4 * C, (int)n, 1.0f, g,
                        (int)n, col, (int)n, i0 ? 1.0f : 0.0f, dwp, 4 * C);
        if (dx.a) {
            /* dcol overwrites col, which the dw GEMM has consumed */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, 4 * C, (int)n, 4 * O, 1.0f, wp,
                        4 * C, g, (int)n, 0.0f, col, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < nb; i++)
                for (int c = 0; c < C; c++)
                    sp_col2im(out_plane(dx, C, HW, i0 + i, c), col + (size_t)c * 4 * n + (size_t)i * P,
                              n, H, W, dx.acc);
        }
    }
    if (dw) sp_unpack_add(dw, dwp, C, O);
    if (db) bias_finish(db, part, B, O);
}

/*
 * Winograd form of the sub-pixel convolution (s->subpixel == 2). The 4 phases above are
 * 2x2 stride-1 correlations of the zero-padded input xp (xp[r][q] = x[r - 1][q - 1]) on the
 * (H + 1) x (W + 1) window grid, with 4O output rows. F(3x3, 2x2) (Lavin & Gray 2016, points
 * 0, 1, -1, inf) gets a 3x3 tile of window positions from a 4x4 patch d of xp with 16
 * products per (input channel, output row) instead of 36:
 *   V = B^T d B,   U = G g G^T (g the 2x2 taps of one phase),   Y = A^T (U . V) A,
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 -1 0 1],  G = [1 0; .5 .5; .5 -.5; 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 0; 0 1 1 1].
 * The transforms only add and halve, so the rounding stays close to the direct sums'
 * (tests/check_conv.c compares with the reference). For each of the 16 points xi the sum
 * over c is one GEMM over the chunk's tiles: M[xi] (4O, n) = U[xi] (4O, C) V[xi] (C, n).
 * At 32 x 32 (33 = 3 x 11 window rows, no tile wasted) that is 2.1x fewer multiply-adds than
 * the nominal count (2.25x fewer than the sub-pixel GEMM); `moelab bench` counts the nominal
 * ones.
 * Backward is the adjoint: dM = A G A^T from the pre-activation gradient G at the tile's
 * windows (0 where no output pixel is), dU[xi] += dM[xi] V[xi]^T, dV[xi] = U[xi]^T dM[xi],
 * dx += B dV B^T (neighbouring tiles' patches share a row or column of xp, added in a fixed
 * order), dw += G^T dU G.
 * The 16 GEMMs per chunk are small (n = 121 tiles per 32 x 32 image), so V and M must stay
 * in the core's cache between the transforms and the GEMMs: each thread runs whole chunks
 * of its own images (chunks dealt round-robin, single-threaded GEMMs inside the parallel
 * region, no barrier per step), with its own dU, summed over the threads in their order
 * at the end (so results are bitwise repeatable for the same thread count). The GEMMs are
 * nn/ppgemm.c's, U packed for them once per call (U for M, U^T for dV; dU reads dM in place
 * and a transposed copy of V[xi]).
 * Layout: U (16, 4O, C); then s->team copies of dU (16, 4O, C); then per thread V (16, C, n)
 * and M (16, 4O, n), n = nb T, and 16 floats of slack; then U packed (wg_packed_off). The nb
 * images of a chunk lie side by side on one window grid (wg_geometry), so that a grid row has nb TB tiles and the transforms, which run along the
 * tile rows 16 tiles per vector, have full vectors also for small images (8 x 8: TB = 3):
 * tile (a, b) of image i is column a nb TB + i TB + b.
 */

/* The thread team of the Winograd path. */
static int wg_team(const ml_conv_shape *s) {
    const int t = omp_get_max_threads();
    return s->team < 1 ? 1 : t < s->team ? t : s->team;
}
/* up[xi] from U[xi] (16, 4O, C), for the forward (trans 0) or dV (trans 1) */
static void wg_pp_pack(float *up, const float *u, int C, int O, int trans) {
    const size_t O4C = (size_t)4 * O * C, np = ml_pp_floats(trans ? C : 4 * O, trans ? 4 * O : C);
#pragma omp parallel for schedule(static)
    for (int xi = 0; xi < 16; xi++)
        ml_pp_pack(up + (size_t)xi * np, u + (size_t)xi * O4C, trans ? C : 4 * O, trans ? 4 * O : C, C, trans);
}

/* Per-thread scratch of the transforms (one allocation, zeroed once): the window-grid plane
 * `grid` (a zero-bordered plane of xp, R4 x Q4, and B^T down 4 rows of it, 4 Q4; or the 4
 * phases of the forward's output, 4 x GR x RW; or backward's dxp, R4 x Q4); 16 tile-major rows
 * `t16` of T16 floats (the transforms run along t, vectorised); backward's gradient plane gp
 * (Ho x Wo) and its 4 phases on the window grid `z` (4 x (GR + 1) x RW, row 0 the window row
 * -1, zero where no output pixel is). Vector loads and stores of 16 tiles or 48 grid columns
 * run up to 64 floats past a row: every region ends in slack, and T16 >= T + 16. */
typedef struct wg_geo { int H, W, TA, TB, T, R4, Q4, RW, SW; } wg_geo;
typedef struct wg_scr { float *grid, *t16, *gp, *z; } wg_scr;
#define WG_SLACK 64
/* The geometry of a chunk of nb images side by side ("wide"): image j's window columns are
 * grid columns j SW .. j SW + SW - 1, SW = 3 x its tiles per row, so every tile lies inside
 * one image and the chunk is one image of nb SW - 1 columns with TB = nb x the image's tiles
 * per row; xp's column j SW is both image j - 1's right and image j's left zero border. */
static wg_geo wg_geometry(const ml_conv_shape *s, int nb) {
    wg_geo g = {.H = s->H, .W = s->W, .TA = wg_tiles_1d(s->H), .TB = nb * wg_tiles_1d(s->W)};
    g.SW = 3 * wg_tiles_1d(s->W);
    g.T = g.TA * g.TB;
    g.R4 = 3 * g.TA + 1, g.Q4 = 3 * g.TB + 1, g.RW = 3 * g.TB;
    return g;
}
static size_t wg_t16(wg_geo g) { return ((size_t)g.T + 31) / 16 * 16; } /* a tile-major row */
static wg_scr wg_scratch(wg_geo g) {
    const size_t a = (size_t)g.R4 * g.Q4 + 4 * (size_t)g.Q4, b = (size_t)4 * 3 * g.TA * g.RW;
    const size_t ng = (a > b ? a : b) + WG_SLACK, nt = (size_t)16 * wg_t16(g) + WG_SLACK;
    const size_t np = (size_t)4 * g.H * g.W + WG_SLACK, nz = (size_t)4 * (3 * g.TA + 1) * g.RW + WG_SLACK;
    float *p = calloc(ng + nt + np + nz, sizeof(float));
    if (!p) abort(); /* no way to report from inside a kernel */
    return (wg_scr){.grid = p, .t16 = p + ng, .gp = p + ng + nt, .z = p + ng + nt + np};
}

/* 16 floats from p, the first cnt of them (the rest 0), and back */
static inline v16 wg_ld(const float *p, int cnt) {
    if (cnt == 16) return *(const v16u *)p;
    return v16_ld_part(p, cnt);
}
static inline void wg_st(float *p, v16 v, int cnt) {
    if (cnt == 16) *(v16u *)p = v;
    else v16_st_part(p, v, cnt);
}

/* v with its lanes from cnt on set to -0, the float that adds exactly nothing (x + -0 == x
 * for every x, -0 and +0 included) */
typedef int v16i __attribute__((vector_size(64)));
static inline v16 wg_keep(v16 v, int cnt) {
    const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16i m = lane < cnt, nz = (v16i)(-(v16){0});
    return (v16)(((v16i)v & m) | (nz & ~m));
}

/* The window grid against tile-major rows: tile b covers grid columns 3 b .. 3 b + 3, so 16
 * tiles' column m are the floats 3 j + m of 48. a_m[j] = p[3 j + m], and back. Two two-vector
 * permutes per vector (vpermt2ps with AVX-512). */
static inline void wg_deint3(const float *p, v16 *a0, v16 *a1, v16 *a2) {
    const v16 l0 = *(const v16u *)p, l1 = *(const v16u *)(p + 16), l2 = *(const v16u *)(p + 32);
    const v16 t0 = __builtin_shufflevector(l0, l1, 0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0);
    const v16 t1 = __builtin_shufflevector(l0, l1, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0);
    const v16 t2 = __builtin_shufflevector(l0, l1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0);
    *a0 = __builtin_shufflevector(t0, l2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29);
    *a1 = __builtin_shufflevector(t1, l2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30);
    *a2 = __builtin_shufflevector(t2, l2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31);
}
static inline void wg_inter3(float *p, v16 a0, v16 a1, v16 a2) {
    const v16 u0 = __builtin_shufflevector(a0, a1, 0, 16, 0, 1, 17, 0, 2, 18, 0, 3, 19, 0, 4, 20, 0, 5);
    const v16 u1 = __builtin_shufflevector(a0, a1, 21, 0, 6, 22, 0, 7, 23, 0, 8, 24, 0, 9, 25, 0, 10, 26);
    const v16 u2 = __builtin_shufflevector(a0, a1, 0, 11, 27, 0, 12, 28, 0, 13, 29, 0, 14, 30, 0, 15, 31, 0);
    *(v16u *)p = __builtin_shufflevector(u0, a2, 0, 1, 16, 3, 4, 17, 6, 7, 18, 9, 10, 19, 12, 13, 20, 15);
    *(v16u *)(p + 16) = __builtin_shufflevector(u1, a2, 0, 21, 2, 3, 22, 5, 6, 23, 8, 9, 24, 11, 12, 25, 14, 15);
    *(v16u *)(p + 32) = __builtin_shufflevector(u2, a2, 26, 1, 2, 27, 4, 5, 28, 7, 8, 29, 10, 11, 30, 13, 14, 31);
}

/* U (16, 4O, C) from w (C, O, 4, 4), 16 input channels at a time: their 4 x 4 kernels for
 * one o (16 floats each, contiguous in w) transposed into t (tap, channel), so that the
 * transform runs along the channels and each of its 64 rows of U is one contiguous store */
static void wg_pack(float *u, const float *w, int C, int O) {
    const size_t O4C = (size_t)4 * O * C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int o = 0; o < O; o++)
        for (int c0 = 0; c0 < C; c0 += 16) {
            const int cnt = C - c0 < 16 ? C - c0 : 16;
            float t[16][16] = {{0}};
            for (int l = 0; l < cnt; l++)
                for (int q = 0; q < 16; q++) t[q][l] = w[((size_t)(c0 + l) * O + o) * 16 + q];
            for (int p = 0; p < 4; p++) {
                v16 g[2][2], h[4][2];
                for (int k = 0; k < 4; k++) {
                    int ky, kx;
                    sp_tap(p, k, &ky, &kx);
                    g[k >> 1][k & 1] = *(const v16u *)t[4 * ky + kx];
                }
                for (int j = 0; j < 2; j++) {
                    h[0][j] = g[0][j];
                    h[1][j] = 0.5f * (g[0][j] + g[1][j]);
                    h[2][j] = 0.5f * (g[0][j] - g[1][j]);
                    h[3][j] = g[1][j];
                }
                float *dst = u + ((size_t)p * O + o) * C + c0;
                for (int e = 0; e < 4; e++) {
                    wg_st(dst + (size_t)(4 * e + 0) * O4C, h[e][0], cnt);
                    wg_st(dst + (size_t)(4 * e + 1) * O4C, 0.5f * (h[e][0] + h[e][1]), cnt);
                    wg_st(dst + (size_t)(4 * e + 2) * O4C, 0.5f * (h[e][0] - h[e][1]), cnt);
                    wg_st(dst + (size_t)(4 * e + 3) * O4C, h[e][1], cnt);
                }
            }
        }
}

/* dw (C, O, 4, 4) += G^T dU G, dU (16, 4O, C): wg_pack's adjoint, 16 channels at a time */
static void wg_unpack_add(float *dw, const float *du, int C, int O) {
    const size_t O4C = (size_t)4 * O * C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int o = 0; o < O; o++)
        for (int c0 = 0; c0 < C; c0 += 16) {
            const int cnt = C - c0 < 16 ? C - c0 : 16;
            float t[16][16]; /* (tap, channel); every tap belongs to one phase */
            for (int p = 0; p < 4; p++) {
                const float *src = du + ((size_t)p * O + o) * C + c0;
                v16 m[4][4], q[2][4];
                for (int xi = 0; xi < 16; xi++) m[xi >> 2][xi & 3] = wg_ld(src + (size_t)xi * O4C, cnt);
                for (int j = 0; j < 4; j++) {
                    q[0][j] = m[0][j] + 0.5f * (m[1][j] + m[2][j]);
                    q[1][j] = 0.5f * (m[1][j] - m[2][j]) + m[3][j];
                }
                for (int ty = 0; ty < 2; ty++) {
                    const v16 g[2] = {q[ty][0] + 0.5f * (q[ty][1] + q[ty][2]),
                                      0.5f * (q[ty][1] - q[ty][2]) + q[ty][3]};
                    for (int tx = 0; tx < 2; tx++) {
                        int ky, kx;
                        sp_tap(p, 2 * ty + tx, &ky, &kx);
                        *(v16u *)t[4 * ky + kx] = g[tx];
                    }
                }
            }
            for (int l = 0; l < cnt; l++)
                for (int k = 0; k < 16; k++) dw[((size_t)(c0 + l) * O + o) * 16 + k] += t[k][l];
        }
}


/* The next plane a transform reads, into the cache while this one is worked on: planes of
 * 4 to 16 KB, each a new 4 KB page, where the hardware prefetcher would start afresh. */
static inline void wg_prefetch(const float *p, size_t n) {
    for (size_t j = 0; j < n; j += 16) __builtin_prefetch(p + j);
}

/* V (16, C, n) of nb images from x (images i0 ..), this thread alone, g their wide geometry
 * (wg_geometry); pad: scratch.grid */
static void wg_input(float *v, size_t n, cat_in x, int i0, int nb, int C, wg_geo g, float *pad) {
    const size_t HW = (size_t)g.H * g.W, Cn = (size_t)C * n;
    float *e = pad + (size_t)g.R4 * g.Q4; /* B^T applied down the 4 rows of one tile row */
    memset(pad, 0, sizeof(float) * (size_t)g.R4 * g.Q4); /* the borders stay 0 */
    for (int c = 0; c < C; c++) {
        for (int i = 0; i < nb; i++) {
            const float *xp = in_plane(x, C, HW, i0 + i, c);
            if (i + 1 < nb) wg_prefetch(in_plane(x, C, HW, i0 + i + 1, c), HW);
            else if (c + 1 < C) wg_prefetch(in_plane(x, C, HW, i0, c + 1), HW);
            for (int iy = 0; iy < g.H; iy++) { /* rows of 8 to 32 floats: no memcpy call */
                float *d = pad + (size_t)(iy + 1) * g.Q4 + (size_t)i * g.SW + 1;
                const float *src = xp + (size_t)iy * g.W;
#pragma omp simd
                for (int j = 0; j < g.W; j++) d[j] = src[j];
            }
        }
        float *dst = v + (size_t)c * n;
        for (int a = 0; a < g.TA; a++) {
            const float *d0 = pad + (size_t)3 * a * g.Q4, *d1 = d0 + g.Q4, *d2 = d1 + g.Q4, *d3 = d2 + g.Q4;
            float *e0 = e, *e1 = e + g.Q4, *e2 = e + 2 * g.Q4, *e3 = e + 3 * g.Q4;
#pragma omp simd
            for (int q = 0; q < g.Q4; q++) {
                e0[q] = d0[q] - d2[q];
                e1[q] = d1[q] + d2[q];
                e2[q] = d2[q] - d1[q];
                e3[q] = d3[q] - d1[q];
            }
            /* B^T along the row, 16 tiles at a time: columns 3 b .. 3 b + 3 of each e row */
            for (int b0 = 0; b0 < g.TB; b0 += 16) {
                const int cnt = g.TB - b0 < 16 ? g.TB - b0 : 16;
                /* lanes past cnt land on later tiles of this chunk, written after */
                const int full = a * g.TB + b0 + 16 <= g.T;
                float *o = dst + (size_t)a * g.TB + b0;
                for (int u = 0; u < 4; u++) {
                    const float *r = e + (size_t)u * g.Q4 + 3 * b0;
                    v16 r0, r1, r2;
                    wg_deint3(r, &r0, &r1, &r2);
                    const v16 r3 = __builtin_shufflevector(r0, *(const v16u *)(r + 48), 1, 2, 3, 4, 5, 6, 7,
                                                           8, 9, 10, 11, 12, 13, 14, 15, 16);
                    const v16 q[4] = {r0 - r2, r1 + r2, r2 - r1, r3 - r1};
                    for (int m = 0; m < 4; m++) {
                        float *om = o + (size_t)(4 * u + m) * Cn;
                        if (full) *(v16u *)om = q[m];
                        else wg_st(om, q[m], cnt);
                    }
                }
            }
        }
    }
}

/* The stride-1 conv2d that follows a transposed conv, run on each chunk of its output while
 * the chunk is in cache (ml_convt2d_forward_cat_next): its shape, output, weights in the
 * direct kernel's layout (direct_forward's wt) and bias. */
typedef struct conv_fwd_next {
    const ml_conv_shape *s;
    float *y;
    const float *wt, *b;
} conv_fwd_next;

static void wg_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w,
                       const float *b, float *ws, const conv_fwd_next *nf) {
    const int B = s->B, C = s->C, O = s->O, W = s->W, Wo = s->Wo, nt = wg_team(s);
    const size_t HWo = (size_t)s->Ho * Wo, O4C = (size_t)4 * O * C;
    float *u = ws, *up = ws + wg_packed_off(s);
    const size_t np = ml_pp_floats(4 * O, C);
    wg_pack(u, w, C, O);
    wg_pp_pack(up, u, C, O, 0);
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *v = ws + (size_t)(16 + 16 * s->team) * O4C + (size_t)tid * wg_thread_floats(s);
        const wg_scr scr = wg_scratch(wg_geometry(s, s->chunk));
        float *y9 = scr.t16;
        for (int i0 = tid * s->chunk; i0 < B; i0 += nth * s->chunk) {
            const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
            const wg_geo g = wg_geometry(s, nb);
            const int T = g.T, TB = g.TB, RW = g.RW, GR = 3 * g.TA; /* window-grid rows */
            const size_t T16 = wg_t16(g);
            const size_t n = (size_t)T, S = (size_t)4 * O * n; /* n = nb x the tiles per image; S: M's point stride */
            float *m = v + (size_t)16 * C * n;
            wg_input(v, n, x, i0, nb, C, g, scr.grid);
            for (int xi = 0; xi < 16; xi++)
                ml_pp_gemm(4 * O, (int)n, C, up + (size_t)xi * np, v + (size_t)xi * C * n, (int)n,
                           m + (size_t)xi * 4 * O * n, (int)n, 0);
            float *yw = scr.grid; /* the 4 phases of one channel on the chunk's window grid */
            for (int o = 0; o < O; o++) {
                for (int p = 0; p < 4; p++) {
                    const float *src = m + ((size_t)p * O + o) * n;
                    for (int t = 0; t < T; t += 16) {
                        const int cnt = T - t < 16 ? T - t : 16;
                        v16 mm[16], z[3][4];
                        for (int xi = 0; xi < 16; xi++) mm[xi] = wg_ld(src + (size_t)xi * S + t, cnt);
                        for (int j = 0; j < 4; j++) {
                            z[0][j] = mm[j] + mm[4 + j] + mm[8 + j];
                            z[1][j] = mm[4 + j] - mm[8 + j];
                            z[2][j] = mm[4 + j] + mm[8 + j] + mm[12 + j];
                        }
                        for (int e = 0; e < 3; e++) {
                            *(v16u *)(y9 + (size_t)(3 * e + 0) * T16 + t) = z[e][0] + z[e][1] + z[e][2];
                            *(v16u *)(y9 + (size_t)(3 * e + 1) * T16 + t) = z[e][1] - z[e][2];
                            *(v16u *)(y9 + (size_t)(3 * e + 2) * T16 + t) = z[e][1] + z[e][2] + z[e][3];
                        }
                    }
                    /* grid row 3 a + e3 interleaves tile rows 3 e3 .. 3 e3 + 2; the 48-float
                     * stores run past a row into rows written after it (or the slack) */
                    float *yp = yw + (size_t)p * GR * RW;
                    for (int a = 0; a < g.TA; a++)
                        for (int e3 = 0; e3 < 3; e3++) {
                            float *d = yp + (size_t)(3 * a + e3) * RW;
                            const float *sk = y9 + (size_t)3 * e3 * T16 + (size_t)a * TB;
                            for (int b0 = 0; b0 < TB; b0 += 16)
                                wg_inter3(d + 3 * b0, *(const v16u *)(sk + b0), *(const v16u *)(sk + T16 + b0),
                                          *(const v16u *)(sk + 2 * T16 + b0));
                        }
                }
                const float bias = b ? b[o] : 0.0f;
                for (int i = 0; i < nb; i++) {
                    float *dst = y + ((size_t)(i0 + i) * O + o) * HWo;
                    const float *yi = yw + (size_t)i * g.SW; /* image i's window columns */
                    for (int oy = 0; oy < s->Ho; oy++) {
                        const int py = oy & 1, r = (oy >> 1) + py;
                        /* px = 0 reads window column q, px = 1 column q + 1 */
                        const float *s0 = yi + ((size_t)(2 * py) * GR + r) * RW;
                        const float *s1 = yi + ((size_t)(2 * py + 1) * GR + r) * RW + 1;
                        float *d = dst + (size_t)oy * Wo;
                        subpixel_row(d, s0, s1, W, bias, s->act);
                    }
                }
            }
            /* the following conv on this chunk's images, one thread (s1_conv inside a parallel
             * region): each of its output rows is computed as in the unfused call, the same bits */
            if (nf) {
                const ml_conv_shape *ns = nf->s;
                s1_conv(nb, one_in(y + (size_t)i0 * O * HWo, O), O, ns->H, ns->W,
                        nf->y + (size_t)i0 * ns->O * ns->Ho * ns->Wo, ns->O, ns->Ho, ns->Wo, ns->k, ns->pad,
                        nf->wt, nf->b, ns->act, 0);
            }
        }
        free(scr.grid);
    }
}

/* db, if not NULL, is reduced in the gather as in sp_backward */
/* The conv2d that follows a transposed conv (ml_convt2d_backward_cat_next): its shape, its
 * output gradient and output, its weights. */
typedef struct conv_next {
    const ml_conv_shape *s;
    const float *dy, *y, *w;
    float *dw; /* next's dw, accumulated in the gather too (next_dw_plane), or NULL */
} conv_next;

/* Its padded pre-activation output gradient planes for one image (nx.s->O planes of PH x PW,
 * the plane at offset k - 1 - pad on both axes, the border 0). */
static void next_grad_planes(float *gq, const conv_next *nx, int i) {
    const ml_conv_shape *ns = nx->s;
    const int k = ns->k, P0 = k - 1 - ns->pad, Ho = ns->Ho, Wo = ns->Wo;
    const int PH = Ho + k - 1, PW = Wo + k - 1;
    const size_t HWo = (size_t)Ho * Wo;
    for (int c = 0; c < ns->O; c++) {
        const size_t off = ((size_t)i * ns->O + c) * HWo;
        const float *d = nx->dy + off, *yy = nx->y ? nx->y + off : NULL;
        float *q = gq + (size_t)c * PH * PW + (size_t)P0 * PW + P0;
        for (int r = 0; r < Ho; r++)
            for (int j = 0; j < Wo; j++)
                q[(size_t)r * PW + j] = act_bwd(ns->act, d[(size_t)r * Wo + j], yy ? yy[(size_t)r * Wo + j] : 0);
    }
}

/* gp (Ho, Wo) = channel o of the following conv's input gradient, from next_grad_planes:
 *   gp[iy][ix] = sum over c, ky, kx of w[c][o][ky][kx] gq[c][iy + k - 1 - ky][ix + k - 1 - kx]
 * in that order, NV vectors of 16 columns of a row at a time in registers (the loads of the
 * last vector of a row may run past it: gq has slack) */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast") /* FMAs, as in the direct kernels above */
static inline __attribute__((always_inline)) void
next_dx_block(const int NV, float *gp, const float *gq, const float *w, int NO, int C, int o,
              int k, int iy, int ix0, int Wo, int PW, size_t plane) {
    const size_t kk = (size_t)k * k;
    v16 acc[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[v] = (v16){0};
    for (int c = 0; c < NO; c++)
        for (int ky = 0; ky < k; ky++) {
            const float *row = gq + (size_t)c * plane + (size_t)(iy + k - 1 - ky) * PW + ix0 + k - 1;
            const float *wr = w + ((size_t)c * C + o) * kk + (size_t)ky * k;
            for (int kx = 0; kx < k; kx++) {
                const float wv = wr[kx];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[v] += wv * *(const v16u *)(row - kx + 16 * v);
            }
        }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const int cnt = Wo - ix0 - 16 * v < 16 ? Wo - ix0 - 16 * v : 16;
        wg_st(gp + (size_t)iy * Wo + ix0 + 16 * v, acc[v], cnt);
    }
}

/* next_dx_block for rows iy and iy + 1 at once: padded row iy + j feeds row iy's tap
 * ky = k - 1 - j and row iy + 1's ky = k - j, so each load serves two FMAs; j runs down, so
 * each row still adds its taps in the order (c, ky, kx) of next_dx_block: the same sums */
static inline __attribute__((always_inline)) void
next_dx_block2(const int NV, float *gp, const float *gq, const float *w, int NO, int C, int o,
               int k, int iy, int ix0, int Wo, int PW, size_t plane) {
    const size_t kk = (size_t)k * k;
    v16 a0[4], a1[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) a0[v] = a1[v] = (v16){0};
    for (int c = 0; c < NO; c++) {
        const float *wc = w + ((size_t)c * C + o) * kk;
        for (int j = k; j >= 0; j--) {
            const float *row = gq + (size_t)c * plane + (size_t)(iy + j) * PW + ix0 + k - 1;
            const int ky0 = k - 1 - j, ky1 = k - j;
            for (int kx = 0; kx < k; kx++) {
                v16 xv[4];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) xv[v] = *(const v16u *)(row - kx + 16 * v);
                if (ky0 >= 0) {
                    const float wv = wc[(size_t)ky0 * k + kx];
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++) a0[v] += wv * xv[v];
                }
                if (ky1 < k) {
                    const float wv = wc[(size_t)ky1 * k + kx];
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++) a1[v] += wv * xv[v];
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const int cnt = Wo - ix0 - 16 * v < 16 ? Wo - ix0 - 16 * v : 16;
        wg_st(gp + (size_t)iy * Wo + ix0 + 16 * v, a0[v], cnt);
        wg_st(gp + (size_t)(iy + 1) * Wo + ix0 + 16 * v, a1[v], cnt);
    }
}

/* f (next_dx_block or next_dx_block2) with its vector count as a constant */
#define NEXT_DX_NV(f, nv, ...)                          \
    switch (nv) {                                       \
    case 4: f(4, __VA_ARGS__); break;                   \
    case 3: f(3, __VA_ARGS__); break;                   \
    case 2: f(2, __VA_ARGS__); break;                   \
    default: f(1, __VA_ARGS__); break;                  \
    }

static void next_dx_plane(float *gp, const float *gq, const conv_next *nx, int o) {
    const ml_conv_shape *ns = nx->s;
    const int k = ns->k, Ho = ns->Ho, Wo = ns->Wo, NO = ns->O, C = ns->C;
    const int PW = Wo + k - 1;
    const size_t plane = (size_t)(Ho + k - 1) * PW;
    for (int iy = 0; iy < Ho; iy += 2) /* two rows per pass; an odd last row alone */
        for (int ix0 = 0; ix0 < Wo; ix0 += 64) {
            const int nv = Wo - ix0 >= 64 ? 4 : (Wo - ix0 + 15) / 16;
            if (iy + 2 <= Ho) {
                NEXT_DX_NV(next_dx_block2, nv, gp, gq, nx->w, NO, C, o, k, iy, ix0, Wo, PW, plane)
            } else {
                NEXT_DX_NV(next_dx_block, nv, gp, gq, nx->w, NO, C, o, k, iy, ix0, Wo, PW, plane)
            }
        }
}
#undef NEXT_DX_NV

/* Channel o's part of the following conv's dw, from the same padded gradient planes gq and
 * its input plane x (this layer's output, Ho x Wo, in cache here):
 *   dw[c][o][ky][kx] = sum over iy, ix of x[iy][ix] gq[c][iy + k - 1 - ky][ix + k - 1 - kx]
 * (next_dx_plane's taps; gq's zero border stands for the positions outside the output). Row r
 * of gq serves x's row r - (k - 1) + ky for every ky: its K shifted vectors are loaded once
 * for all K x K taps, each a register of 16 float lanes over the whole plane (lane = ix mod
 * 16, the ragged end of a row masked to 0 on both operands); then into lanes (c, ky, kx) in
 * double. K literal in every call (up to 3: K x K accumulators). */
static inline __attribute__((always_inline)) void
next_dw_taps(const int K, v8d *lanes, const float *gq, const float *x, int C, int o, int Ho, int Wo,
             int c, size_t plane) {
    const int PW = Wo + K - 1;
    v16 acc[3][3];
#pragma GCC unroll 3
    for (int ky = 0; ky < K; ky++)
#pragma GCC unroll 3
        for (int kx = 0; kx < K; kx++) acc[ky][kx] = (v16){0};
    for (int r = 0; r < Ho + K - 1; r++) {
        const float *gr = gq + (size_t)c * plane + (size_t)r * PW + K - 1;
        for (int ix = 0; ix < Wo; ix += 16) {
            const int cnt = Wo - ix < 16 ? Wo - ix : 16;
            v16 gv[3];
#pragma GCC unroll 3
            for (int kx = 0; kx < K; kx++) gv[kx] = wg_ld(gr + ix - kx, cnt);
#pragma GCC unroll 3
            for (int ky = 0; ky < K; ky++) {
                const int iy = r - (K - 1) + ky;
                if (iy < 0 || iy >= Ho) continue;
                const v16 xv = wg_ld(x + (size_t)iy * Wo + ix, cnt);
#pragma GCC unroll 3
                for (int kx = 0; kx < K; kx++) acc[ky][kx] += xv * gv[kx];
            }
        }
    }
#pragma GCC unroll 3
    for (int ky = 0; ky < K; ky++)
#pragma GCC unroll 3
        for (int kx = 0; kx < K; kx++) {
            const v16 a = acc[ky][kx];
            v8d *l = lanes + 2 * ((((size_t)c * C + o) * K + ky) * K + kx);
            l[0] += __builtin_convertvector(__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
            l[1] += __builtin_convertvector(__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
        }
}

/* larger kernels (up to ML_CONV_NEXT_MAX_K): one ky at a time, the same sums per tap */
static void next_dw_taps_k(v8d *lanes, const float *gq, const float *x, int C, int o, int Ho, int Wo, int K,
                           int c, size_t plane) {
    const int PW = Wo + K - 1;
    for (int ky = 0; ky < K; ky++) {
        v16 acc[ML_CONV_NEXT_MAX_K];
        for (int kx = 0; kx < K; kx++) acc[kx] = (v16){0};
        for (int r = 0; r < Ho + K - 1; r++) {
            const int iy = r - (K - 1) + ky;
            if (iy < 0 || iy >= Ho) continue;
            const float *gr = gq + (size_t)c * plane + (size_t)r * PW + K - 1;
            for (int ix = 0; ix < Wo; ix += 16) {
                const int cnt = Wo - ix < 16 ? Wo - ix : 16;
                const v16 xv = wg_ld(x + (size_t)iy * Wo + ix, cnt);
                for (int kx = 0; kx < K; kx++) acc[kx] += xv * wg_ld(gr + ix - kx, cnt);
            }
        }
        for (int kx = 0; kx < K; kx++) {
            const v16 a = acc[kx];
            v8d *l = lanes + 2 * ((((size_t)c * C + o) * K + ky) * K + kx);
            l[0] += __builtin_convertvector(__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
            l[1] += __builtin_convertvector(__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
        }
    }
}

static void next_dw_plane(v8d *lanes, const float *gq, const float *x, const conv_next *nx, int o) {
    const ml_conv_shape *ns = nx->s;
    const int k = ns->k, Ho = ns->Ho, Wo = ns->Wo;
    const size_t plane = (size_t)(Ho + k - 1) * (Wo + k - 1);
    for (int c = 0; c < ns->O; c++) switch (k) {
        case 1: next_dw_taps(1, lanes, gq, x, ns->C, o, Ho, Wo, c, plane); break;
        case 2: next_dw_taps(2, lanes, gq, x, ns->C, o, Ho, Wo, c, plane); break;
        case 3: next_dw_taps(3, lanes, gq, x, ns->C, o, Ho, Wo, c, plane); break;
        default: next_dw_taps_k(lanes, gq, x, ns->C, o, Ho, Wo, k, c, plane); break;
        }
}
#pragma GCC pop_options

/* nx: dy is not given but computed plane by plane as the input gradient of the following
 * conv2d (ml_convt2d_backward_cat_next) */
static void wg_backward(const ml_conv_shape *s, cat_out dx, float *dw, float *db, const float *dy,
                        const float *y, cat_in x, const float *w, float *ws, const conv_next *nx) {
    const int B = s->B, C = s->C, O = s->O, H = s->H, W = s->W, Wo = s->Wo, nt = wg_team(s);
    const size_t HW = (size_t)H * W, HWo = (size_t)s->Ho * Wo, O4C = (size_t)4 * O * C;
    const ml_conv_act act = s->act;
    float *u = ws, *du = ws + (size_t)16 * O4C, *up = ws + wg_packed_off(s);
    const size_t np = ml_pp_floats(C, 4 * O);
    float *part = ws + layer_workspace(s); /* (B, O) bias partials */
    if (dx.a) {
        wg_pack(u, w, C, O);
        wg_pp_pack(up, u, C, O, 1);
    }
    /* the following conv's dw (nx->dw): 16 double lanes per tap and thread, summed at the end
     * in lane, then thread order */
    const size_t ntap = nx && nx->dw ? (size_t)nx->s->O * nx->s->C * nx->s->k * nx->s->k : 0;
    v8d *nlanes = ntap ? aligned_alloc(sizeof(v8d), sizeof(v8d) * 2 * ntap * (size_t)nt) : NULL;
    if (ntap && !nlanes) abort(); /* no way to report from inside a kernel */
    if (ntap) memset(nlanes, 0, sizeof(v8d) * 2 * ntap * (size_t)nt);
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *v = ws + (size_t)(16 + 16 * s->team) * O4C + (size_t)tid * wg_thread_floats(s);
        float *dut = du + (size_t)tid * 16 * O4C; /* this thread's dU */
        v8d *nl = ntap ? nlanes + 2 * ntap * (size_t)tid : NULL;
        const wg_scr scr = wg_scratch(wg_geometry(s, s->chunk));
        /* dU's GEMM reads V^T (n x C16) as its B: this thread's copy of one point's */
        const int C16 = (C + 15) / 16 * 16;
        float *vt = dw ? ml_alloc_floats((size_t)wg_geometry(s, s->chunk).T * C16) : NULL;
        if (dw && !vt) abort(); /* no way to report from inside a kernel */
        float *t16 = scr.t16;
        float *gq = NULL; /* the following conv's gradient planes of a chunk's images, and slack */
        size_t gqn = 0;   /* floats of one image's */
        if (nx) {
            const ml_conv_shape *ns = nx->s;
            gqn = (size_t)ns->O * (ns->Ho + ns->k - 1) * (ns->Wo + ns->k - 1);
            gq = calloc(gqn * (size_t)s->chunk + 64, sizeof(float));
            if (!gq) abort(); /* no way to report from inside a kernel */
        }
        int first = 1;
        for (int i0 = tid * s->chunk; i0 < B; i0 += nth * s->chunk) {
            const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
            const wg_geo g = wg_geometry(s, nb);
            const int T = g.T, TB = g.TB, RW = g.RW, GR = 3 * g.TA, Q4 = g.Q4;
            const size_t T16 = wg_t16(g);
            const size_t n = (size_t)T, S = (size_t)4 * O * n, Cn = (size_t)C * n;
            float *m = v + (size_t)16 * C * n;
            /* the window grid's borders and the columns between images stay 0 within a chunk */
            memset(scr.z, 0, sizeof(float) * 4 * (size_t)(GR + 1) * RW);
            if (nx)
                for (int i = 0; i < nb; i++) next_grad_planes(gq + (size_t)i * gqn, nx, i0 + i);
            /* dM from the pre-activation gradient gp on the window grid: phase p of window
             * (r, q) <- output pixel (2 r - py, 2 q - px) when r - py and q - px are inside */
            float *gp = scr.gp; /* (Ho, Wo) */
            for (int o = 0; o < O; o++) {
                for (int i = 0; i < nb; i++) {
                    const size_t off = ((size_t)(i0 + i) * O + o) * HWo;
                    const float *d = nx ? gp : dy + off, *yy = y ? y + off : NULL;
                    if (nx) next_dx_plane(gp, gq + (size_t)i * gqn, nx, o);
                    if (nl) next_dw_plane(nl, gq + (size_t)i * gqn, yy, nx, o);
                    if (act == ML_CONV_ACT_NONE) {
                        if (!nx) memcpy(gp, d, sizeof(float) * HWo);
                    } else if (act == ML_CONV_ACT_RELU) /* the SRNN case, vectorised */
#pragma omp simd
                        for (size_t j = 0; j < HWo; j++) gp[j] = yy[j] > 0 ? d[j] : 0.0f;
                    else
                        for (size_t j = 0; j < HWo; j++) gp[j] = act_bwd(act, d[j], yy[j]);
                    if (db) part[(size_t)(i0 + i) * O + o] = act_bwd_sum(ML_CONV_ACT_NONE, gp, NULL, HWo);
                    /* gp's 4 phases on image i's columns of the window grid */
                    for (int r = 0; r < s->Ho; r++) {
                        const int py = r & 1, mr = r >> 1;
                        const float *gr = gp + (size_t)r * Wo;
                        float *z0 = scr.z + ((size_t)(2 * py) * (GR + 1) + mr + 1) * RW + (size_t)i * g.SW;
                        float *z1 = scr.z + ((size_t)(2 * py + 1) * (GR + 1) + mr + 1) * RW + (size_t)i * g.SW + 1;
#pragma omp simd
                        for (int j = 0; j < W; j++) {
                            z0[j] = gr[2 * j];
                            z1[j] = gr[2 * j + 1];
                        }
                    }
                }
                for (int p = 0; p < 4; p++) {
                    const int py = p >> 1;
                    /* the 9 windows of every tile, tile-major: window row 3 aa + k / 3 - py
                     * (z's row + 1), column 3 bb + k % 3; the stores past a tile row land
                     * on the tiles after it, written later, or T16's slack */
                    const float *zp = scr.z + (size_t)p * (GR + 1) * RW;
                    for (int aa = 0; aa < g.TA; aa++)
                        for (int kr = 0; kr < 3; kr++) {
                            const float *zr = zp + (size_t)(3 * aa + kr - py + 1) * RW;
                            float *dk = t16 + (size_t)3 * kr * T16 + (size_t)aa * TB;
                            for (int b0 = 0; b0 < TB; b0 += 16) {
                                v16 a0, a1, a2;
                                wg_deint3(zr + 3 * b0, &a0, &a1, &a2);
                                *(v16u *)(dk + b0) = a0;
                                *(v16u *)(dk + T16 + b0) = a1;
                                *(v16u *)(dk + 2 * T16 + b0) = a2;
                            }
                        }
                    float *dst = m + ((size_t)p * O + o) * n;
                    for (int t = 0; t < T; t += 16) {
                        const int cnt = T - t < 16 ? T - t : 16;
                        v16 gg[9], z[4][3];
                        for (int k = 0; k < 9; k++) gg[k] = *(const v16u *)(t16 + (size_t)k * T16 + t);
                        for (int j = 0; j < 3; j++) {
                            z[0][j] = gg[j];
                            z[1][j] = gg[j] + gg[3 + j] + gg[6 + j];
                            z[2][j] = gg[j] - gg[3 + j] + gg[6 + j];
                            z[3][j] = gg[6 + j];
                        }
                        for (int e = 0; e < 4; e++) {
                            wg_st(dst + (size_t)(4 * e + 0) * S + t, z[e][0], cnt);
                            wg_st(dst + (size_t)(4 * e + 1) * S + t, z[e][0] + z[e][1] + z[e][2], cnt);
                            wg_st(dst + (size_t)(4 * e + 2) * S + t, z[e][0] - z[e][1] + z[e][2], cnt);
                            wg_st(dst + (size_t)(4 * e + 3) * S + t, z[e][2], cnt);
                        }
                    }
                }
            }
            wg_input(v, n, x, i0, nb, C, g, scr.grid);
            for (int xi = 0; xi < 16; xi++) {
                float *mx = m + (size_t)xi * S, *vx = v + (size_t)xi * Cn;
                if (dw) { /* dU[xi] (+)= dM[xi] V[xi]^T */
                    ml_pp_transpose(vt, C16, vx, C, (int)n, (int)n);
                    ml_pp_gemm_rows(4 * O, C, (int)n, mx, (int)n, vt, C16, dut + (size_t)xi * O4C, C, !first);
                }
                if (dx.a) /* dV overwrites V[xi], which the dU GEMM has consumed */
                    ml_pp_gemm(C, (int)n, 4 * O, up + (size_t)xi * np, mx, (int)n, vx, (int)n, 0);
            }
            first = 0;
            if (dx.a) {
                float *pad = scr.grid; /* dxp of one channel, zero-bordered */
                for (int c = 0; c < C; c++) {
                    memset(pad, 0, sizeof(float) * (size_t)g.R4 * Q4);
                    const float *src = v + (size_t)c * n;
                    for (int t = 0; t < T; t += 16) {
                        const int cnt = T - t < 16 ? T - t : 16;
                        v16 mm[16], z[4][4];
                        for (int xi = 0; xi < 16; xi++) mm[xi] = wg_ld(src + (size_t)xi * Cn + t, cnt);
                        /* B down the rows: [v0, v1 - v2 - v3, v1 + v2 - v0, v3] */
                        for (int j = 0; j < 4; j++) {
                            z[0][j] = mm[j];
                            z[1][j] = mm[4 + j] - mm[8 + j] - mm[12 + j];
                            z[2][j] = mm[4 + j] + mm[8 + j] - mm[j];
                            z[3][j] = mm[12 + j];
                        }
                        for (int e = 0; e < 4; e++) {
                            *(v16u *)(t16 + (size_t)(4 * e + 0) * T16 + t) = z[e][0];
                            *(v16u *)(t16 + (size_t)(4 * e + 1) * T16 + t) = z[e][1] - z[e][2] - z[e][3];
                            *(v16u *)(t16 + (size_t)(4 * e + 2) * T16 + t) = z[e][1] + z[e][2] - z[e][0];
                            *(v16u *)(t16 + (size_t)(4 * e + 3) * T16 + t) = z[e][3];
                        }
                    }
                    /* patches overlap their neighbours by one row and column: added
                     * tile row by tile row, each row's 16 taps in order, as
                     * pad[3 a + ky][3 bb + kx] += tap (4 ky + kx) of tile bb. Per grid row, 16
                     * tiles at a time: columns 3 bb + kx (kx < 3) take taps kx, column 3 bb
                     * then tap 3 of tile bb - 1. Lanes past the tile row hold -0, so the
                     * 48-float stores past a row write back what they read. */
                    for (int a = 0; a < g.TA; a++) {
                        v16 prev[4]; /* tap 3 of the 16 tiles before, per ky */
                        for (int ky = 0; ky < 4; ky++) prev[ky] = -(v16){0};
                        /* (grid column 3 TB, tap 3 of the last tile alone, is xp's
                         * right border, never read: 3 TB >= W + 1) */
                        for (int b0 = 0; b0 < TB; b0 += 16) {
                            const int cnt = TB - b0 < 16 ? TB - b0 : 16;
                            const float *sk = t16 + (size_t)a * TB + b0;
                            for (int ky = 0; ky < 4; ky++) {
                                const float *sy = sk + (size_t)4 * ky * T16;
                                const v16 s0 = wg_keep(*(const v16u *)sy, cnt);
                                const v16 s1 = wg_keep(*(const v16u *)(sy + T16), cnt);
                                const v16 s2 = wg_keep(*(const v16u *)(sy + 2 * T16), cnt);
                                const v16 s3 = wg_keep(*(const v16u *)(sy + 3 * T16), cnt);
                                const v16 s3b = __builtin_shufflevector(prev[ky], s3, 15, 16, 17, 18, 19, 20, 21,
                                                                        22, 23, 24, 25, 26, 27, 28, 29, 30);
                                prev[ky] = s3;
                                float *row = pad + (size_t)(3 * a + ky) * Q4 + 3 * b0;
                                v16 c0, c1, c2;
                                wg_deint3(row, &c0, &c1, &c2);
                                wg_inter3(row, (c0 + s0) + s3b, c1 + s1, c2 + s2);
                            }
                        }
                    }
                    for (int i = 0; i < nb; i++) {
                        float *dd = out_plane(dx, C, HW, i0 + i, c);
                        for (int iy = 0; iy < H; iy++) {
                            const float *sr = pad + (size_t)(iy + 1) * Q4 + (size_t)i * g.SW + 1;
                            float *dr = dd + (size_t)iy * W;
                            if (dx.acc)
#pragma omp simd
                                for (int ix = 0; ix < W; ix++) dr[ix] += sr[ix];
                            else
                                memcpy(dr, sr, sizeof(float) * (size_t)W);
                        }
                    }
                }
            }
        }
        if (dw && first) memset(dut, 0, sizeof(float) * 16 * O4C); /* a thread without images */
        free(scr.grid);
        free(gq);
        free(vt);
    }
    if (dw) {
        /* the threads' dU in thread order */
        const size_t nU = (size_t)16 * O4C;
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < nU; j++)
            for (int t = 1; t < nt; t++) du[j] += du[(size_t)t * nU + j];
        wg_unpack_add(dw, du, C, O);
    }
    for (size_t t = 0; t < ntap; t++) {
        double sum = 0;
        for (int th = 0; th < nt; th++) {
            double a[LANES], st = 0;
            memcpy(a, &nlanes[2 * (ntap * (size_t)th + t)], sizeof a);
            for (int l = 0; l < LANES; l++) st += a[l];
            sum += st;
        }
        nx->dw[t] += (float)sum;
    }
    free(nlanes);
    if (db) bias_finish(db, part, B, O);
}

static void convt_forward(const ml_conv_shape *s, float *y, cat_in x, const float *w,
                          const float *b, float *ws) {
    const int B = s->B, C = s->C, O = s->O, k = s->k;
    const size_t HW = (size_t)s->H * s->W, HWo = (size_t)s->Ho * s->Wo;
    const int K = O * k * k;
    if (s->subpixel) {
        if (s->subpixel == 2) wg_forward(s, y, x, w, b, ws, NULL);
        else sp_forward(s, y, x, w, b, ws);
        return;
    }
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * HW;
        float *col = ws, *xt = ws + (size_t)K * n;
        nchw_to_cn(xt, x, i0, nb, C, HW);
        /* col (O k k, n) = w^T (O k k, C) xt (C, n) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, (int)n, C, 1.0f, w, K, xt,
                    (int)n, 0.0f, col, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < nb; i++)
            for (int o = 0; o < O; o++) {
                float *dst = y + ((size_t)(i0 + i) * O + o) * HWo;
                col2im_plane(dst, col + (size_t)o * k * k * n + (size_t)i * HW, n, s->Ho, s->Wo,
                             s->H, s->W, k, s->stride, s->pad, 0);
                const float bias = b ? b[o] : 0.0f;
                for (size_t j = 0; j < HWo; j++) dst[j] = act_fwd(s->act, dst[j] + bias);
            }
    }
}

static void convt_backward(const ml_conv_shape *s, cat_out dx, float *dw, float *db,
                           const float *dy, const float *y, cat_in x, const float *w, float *ws) {
    const int B = s->B, C = s->C, O = s->O, k = s->k;
    const size_t HW = (size_t)s->H * s->W, HWo = (size_t)s->Ho * s->Wo;
    const int K = O * k * k;
    const ml_conv_act act = s->act;
    if (s->subpixel && (dw || dx.a)) {
        if (s->subpixel == 2) wg_backward(s, dx, dw, db, dy, y, x, w, ws, NULL);
        else sp_backward(s, dx, dw, db, dy, y, x, w, ws);
        return;
    }
    float *part = ws + layer_workspace(s); /* (B, O) bias partials */
    /* with an activation the bias partials are summed from the chunk's pre-activation
     * gradient while it is in cache; without, in one pass here */
    if (db && (act == ML_CONV_ACT_NONE || (!dw && !dx.a))) {
        bias_backward(db, dy, y, act, B, O, HWo, part);
        db = NULL;
    }
    if (!dw && !dx.a) return;
    for (int i0 = 0; i0 < B; i0 += s->chunk) {
        const int nb = B - i0 < s->chunk ? B - i0 : s->chunk;
        const size_t n = (size_t)nb * HW;
        float *col = ws, *xt = ws + (size_t)K * n;
        const float *g = dy + (size_t)i0 * O * HWo;
        if (act != ML_CONV_ACT_NONE) {
            float *pre = xt + (size_t)(C > O ? C : O) * n;
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < nb; i++)
                for (int o = 0; o < O; o++) {
                    const size_t off = ((size_t)(i0 + i) * O + o) * HWo;
                    float *dst = pre + ((size_t)i * O + o) * HWo;
                    for (size_t j = 0; j < HWo; j++) dst[j] = act_bwd(act, dy[off + j], y[off + j]);
                    if (db) part[(size_t)(i0 + i) * O + o] = act_bwd_sum(ML_CONV_ACT_NONE, dst, NULL, HWo);
                }
            g = pre;
        }
        /* col (O k k, n): the output gradient seen through the kernel window at every input
         * position, i.e. conv2d's im2col of dy sampled on the input grid */
        im2col(col, one_in(g, O), 0, nb, O, s->Ho, s->Wo, s->H, s->W, k, s->stride, s->pad);
        if (dw) {
            nchw_to_cn(xt, x, i0, nb, C, HW);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, K, (int)n, 1.0f, xt, (int)n,
                        col, (int)n, 1.0f, dw, K);
        }
        if (dx.a) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, (int)n, K, 1.0f, w, K, col,
                        (int)n, 0.0f, xt, (int)n);
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < nb; i++)
                for (int c = 0; c < C; c++) {
                    float *dst = out_plane(dx, C, HW, i0 + i, c);
                    const float *src = xt + (size_t)c * n + (size_t)i * HW;
                    if (dx.acc)
                        for (size_t j = 0; j < HW; j++) dst[j] += src[j];
                    else
                        memcpy(dst, src, sizeof(float) * HW);
                }
        }
    }
    if (db) bias_finish(db, part, B, O);
}

void ml_convt2d_forward(const ml_conv_shape *s, float *y, const float *x, const float *w,
                        const float *b, float *ws) {
    convt_forward(s, y, one_in(x, s->C), w, b, ws);
}

void ml_convt2d_backward(const ml_conv_shape *s, float *dx, float *dw, float *db,
                         const float *dy, const float *y, const float *x, const float *w,
                         float *ws) {
    convt_backward(s, (cat_out){dx, NULL, s->C, 1}, dw, db, dy, y, one_in(x, s->C), w, ws);
}

void ml_convt2d_forward_cat(const ml_conv_shape *s, int Ca, float *y, const float *xa,
                            const float *xb, const float *w, const float *b, float *ws) {
    convt_forward(s, y, (cat_in){xa, xb, Ca, 0}, w, b, ws);
}

void ml_convt2d_backward_cat(const ml_conv_shape *s, int Ca, float *dxa, float *dxb, float *dw,
                             float *db, const float *dy, const float *y, const float *xa,
                             const float *xb, const float *w, float *ws) {
    convt_backward(s, (cat_out){dxa, dxb, Ca, 0}, dw, db, dy, y, (cat_in){xa, xb, Ca, 0}, w, ws);
}

int ml_convt2d_fuses_next_forward(const ml_conv_shape *s, const ml_conv_shape *next) {
    return s->transposed && s->subpixel == 2 && !next->transposed && next->stride == 1 && next->direct &&
           next->B == s->B && next->C == s->O && next->H == s->Ho && next->W == s->Wo &&
           next->Ho == s->Ho && next->Wo == s->Wo;
}

int ml_convt2d_forward_cat_next(const ml_conv_shape *s, int Ca, float *y, const float *xa, const float *xb,
                                const float *w, const float *b, const ml_conv_shape *next, float *ny,
                                const float *nw, const float *nb, float *ws) {
    assert(ml_convt2d_fuses_next_forward(s, next));
    float *wt = ml_alloc_floats(direct_wt_floats(next));
    if (!wt) return ml_errorf("convt2d: out of memory for the following conv's weights");
    direct_wt(next, wt, nw);
    const conv_fwd_next nf = {next, ny, wt, nb};
    wg_forward(s, y, (cat_in){xa, xb, Ca, 0}, w, b, ws, &nf);
    free(wt);
    return ML_OK;
}

int ml_convt2d_fuses_next(const ml_conv_shape *s, const ml_conv_shape *next) {
    return s->transposed && s->subpixel == 2 && !next->transposed && next->stride == 1 &&
           next->B == s->B && next->C == s->O && next->H == s->Ho && next->W == s->Wo &&
           next->Ho == s->Ho && next->Wo == s->Wo && next->O <= ML_CONV_NEXT_MAX_O &&
           next->k <= ML_CONV_NEXT_MAX_K;
}

void ml_convt2d_backward_cat_next(const ml_conv_shape *s, int Ca, float *dxa, float *dxb,
                                  float *dw, float *db, const ml_conv_shape *next, const float *ndy,
                                  const float *ny, const float *nw, float *ndw, const float *y,
                                  const float *xa, const float *xb, const float *w, float *ws) {
    assert(ml_convt2d_fuses_next(s, next) && (ny != NULL || next->act == ML_CONV_ACT_NONE) &&
           (y != NULL || (ndw == NULL && s->act == ML_CONV_ACT_NONE)));
    const conv_next nx = {next, ndy, ny, nw, ndw};
    wg_backward(s, (cat_out){dxa, dxb, Ca, 0}, dw, db, NULL, y, (cat_in){xa, xb, Ca, 0}, w, ws, &nx);
}
