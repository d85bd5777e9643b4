/*
 * optim.h — SGD (with momentum) and Adam over a whole ml_params block.
 *
 * One loop over the contiguous block: parameters, gradients and moments share one layout.
 * Adam follows Kingma & Ba (2015) as torch.optim.Adam implements it, weight decay as an
 * L2 term added to the gradient (torch's `weight_decay`). Each tensor keeps its own step
 * count for bias correction, as torch does per parameter, so experts added mid-training
 * start their Adam moments from zero with a fresh bias correction.
 */
#ifndef MOELAB_OPTIM_H
#define MOELAB_OPTIM_H

#include <stdint.h>
#include "nn/params.h"

typedef enum { ML_OPTIM_ADAM = 0, ML_OPTIM_SGD = 1 } ml_optim_kind;

typedef struct ml_optim {
    ml_optim_kind kind;
    float lr, beta1, beta2, eps, weight_decay, momentum;
    int64_t t; /* optimizer steps taken */
} ml_optim;

void ml_optim_step(ml_optim *o, ml_params *p);

#endif
