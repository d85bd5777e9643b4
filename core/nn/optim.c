/* optim.c — SGD and Adam over the contiguous parameter block. */
#include "nn/optim.h"

#include <math.h>

void ml_optim_step(ml_optim *o, ml_params *p) {
    float *w = p->data, *g = p->grad, *m = p->m, *v = p->v;
    const float wd = o->weight_decay, lr = o->lr;
    o->t++;
    if (o->kind == ML_OPTIM_SGD) {
        const float mu = o->momentum;
        for (size_t i = 0; i < p->total; i++) {
            float gi = g[i] + wd * w[i];
            if (mu > 0) {
                m[i] = mu * m[i] + gi;
                gi = m[i];
            }
            w[i] -= lr * gi;
        }
        return;
    }
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    for (int k = 0; k < p->count; k++) {
        ml_tensor *t = &p->t[k];
        t->step++;
        const float c1 = 1.0f - (float)pow(b1, (double)t->step);
        const float c2 = 1.0f - (float)pow(b2, (double)t->step);
        const float step = lr / c1, rc2 = 1.0f / sqrtf(c2);
        float *tw = w + t->off, *tg = g + t->off, *tm = m + t->off, *tv = v + t->off;
        const size_t tn = t->n;
        #pragma omp parallel for schedule(static) if (tn > 65536)
        for (size_t i = 0; i < tn; i++) {
            float gi = tg[i] + wd * tw[i];
            tm[i] = b1 * tm[i] + (1.0f - b1) * gi;
            tv[i] = b2 * tv[i] + (1.0f - b2) * gi * gi;
            tw[i] -= step * tm[i] / (sqrtf(tv[i]) * rc2 + eps);
        }
    }
}
