/*
 * camouflage.c — the synthetic camouflage generator (data/camouflage.h): habitat textures
 * built from value noise and sinusoids, one random object shape per image filled with a
 * perturbed texture of the same habitat, and the source data.c splits.
 *
 * Every random choice of sample i comes from one of five xoshiro streams seeded by a hash
 * of (seed, i, stream): the texture parameters, the shape, the scene's low-frequency
 * fields (shared by background and object), the background's pattern and the object's
 * pattern. Difficulty only scales the parameter gap, so it moves nothing else.
 */
#include "data/camouflage.h"
#include "data/source.h"
#include "base/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SALT_CAMO 0x5eed5a17c0ffee04ULL
#define GOLDEN 0x9e3779b97f4a7c15ULL
#define TWO_PI 6.28318530717958647692f

enum { STREAM_PARAM, STREAM_SHAPE, STREAM_SHARED, STREAM_BG, STREAM_OBJ };

static const char *const habitat_names[ML_CAMO_HABITATS] = {"foliage", "sand", "underwater"};

const char *ml_camo_habitat_name(int h) {
    return h >= 0 && h < ML_CAMO_HABITATS ? habitat_names[h] : NULL;
}

int ml_camo_habitat_parse(const char *name) {
    for (int h = 0; name && h < ML_CAMO_HABITATS; h++)
        if (!strcmp(name, habitat_names[h])) return h;
    return -1;
}

int ml_camo_cfg_init(ml_camo_cfg *c, uint64_t seed, int size, double difficulty,
                     const char *const *names, int n) {
    memset(c, 0, sizeof *c);
    c->seed = seed;
    c->size = size ? size : ML_CAMO_DEFAULT_SIZE;
    if (c->size < ML_CAMO_MIN_SIZE || c->size > ML_CAMO_MAX_SIZE)
        return ml_errorf("camouflage: image_size %d, expected 0 (= %d) or %d..%d", size,
                         ML_CAMO_DEFAULT_SIZE, ML_CAMO_MIN_SIZE, ML_CAMO_MAX_SIZE);
    if (!(difficulty >= 0 && difficulty <= 1))
        return ml_errorf("camouflage: difficulty %g, expected 0 (obvious) .. 1 (the object's "
                         "texture statistics equal the background's)",
                         difficulty);
    c->difficulty = difficulty;
    if (!names || n == 0) {
        c->n_habitats = ML_CAMO_HABITATS;
        for (int h = 0; h < ML_CAMO_HABITATS; h++) c->habitat[h] = h;
        return ML_OK;
    }
    if (n < 0 || n > ML_CAMO_HABITATS)
        return ml_errorf("camouflage: %d habitats, expected 1..%d of foliage, sand, underwater",
                         n, ML_CAMO_HABITATS);
    for (int k = 0; k < n; k++) {
        int h = ml_camo_habitat_parse(names[k]);
        if (h < 0)
            return ml_errorf("camouflage: habitats: unknown habitat '%s', expected foliage, "
                             "sand or underwater",
                             names[k] ? names[k] : "(null)");
        for (int j = 0; j < k; j++)
            if (c->habitat[j] == h)
                return ml_errorf("camouflage: habitats: '%s' is listed twice (items %d and %d)",
                                 names[k], j, k);
        c->habitat[k] = h;
    }
    c->n_habitats = n;
    return ML_OK;
}

/* ------------------------------------------------------------------ helpers --- */

static uint64_t mix64(uint64_t z) { /* splitmix64's finaliser */
    z += GOLDEN;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t stream_seed(const ml_camo_cfg *c, int64_t index, int stream) {
    return mix64(mix64(c->seed ^ SALT_CAMO) ^ mix64((uint64_t)index * 8u + (uint64_t)stream));
}

static float unif(ml_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)ml_rng_uniform(r);
}

static float clamp01(float v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

static float smoothstep(float a, float b, float v) {
    float t = clamp01((v - a) / (b - a));
    return t * t * (3 - 2 * t);
}

/*
 * sin(2 pi t): reduced to [-1/4, 1/4] by periodicity and symmetry, then an odd Taylor
 * polynomial to z^9 (error < 4e-6). Plain float arithmetic, so the images do not depend on
 * the C library's sinf.
 */
static inline float sin_cycles(float t) {
    t -= floorf(t + 0.5f); /* [-1/2, 1/2) */
    if (t > 0.25f) t = 0.5f - t;
    else if (t < -0.25f) t = -0.5f - t;
    float z = TWO_PI * t, z2 = z * z;
    return z * (1 + z2 * (-1.0f / 6 + z2 * (1.0f / 120 + z2 * (-1.0f / 5040 + z2 * (1.0f / 362880)))));
}

/* A per-pixel hash in [-1, 1] (fine grain). */
static inline float grain(uint64_t key, int x, int y) {
    uint64_t h = mix64(key ^ ((uint64_t)(uint32_t)y << 32 | (uint32_t)x));
    return (float)(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

typedef struct rect {
    int x0, y0, x1, y1; /* [x0, x1) x [y0, y1) */
} rect;

/* Scratch of one call: three noise planes, a lattice and the per-axis interpolation tables. */
typedef struct work {
    int S;
    float *f1, *f2, *f3; /* (S, S) */
    float *lat;          /* (lat_cap) */
    size_t lat_cap;
    int32_t *ix, *iy;    /* (S) lattice cell of each column / row */
    float *fx, *fy;      /* (S) smoothstepped position inside it */
} work;

#define MIN_PERIOD 2.0f

/*
 * Value noise of one octave into out over r: a lattice of uniform values in [-1, 1] with
 * spacing `period` pixels and a random offset, interpolated with smoothstep weights.
 * out = amp * noise (overwrites). The lattice covers the whole S x S frame and is drawn
 * before r is looked at, so a rectangle is an exact crop of the full-frame field.
 */
static void noise(work *w, float *out, rect r, float period, float amp, ml_rng *rng) {
    int S = w->S;
    if (period < MIN_PERIOD) period = MIN_PERIOD;
    int g = (int)(S / period) + 3;
    float ox = unif(rng, 0, period), oy = unif(rng, 0, period);
    size_t cells = (size_t)g * g;
    if (cells > w->lat_cap) cells = w->lat_cap; /* unreachable: lat_cap covers MIN_PERIOD */
    for (size_t k = 0; k < cells; k++) w->lat[k] = (float)ml_rng_uniform(rng) * 2 - 1;
    float inv = 1 / period;
    for (int x = r.x0; x < r.x1; x++) {
        float u = (x + 0.5f + ox) * inv;
        int i = (int)u;
        float f = u - i;
        w->ix[x] = i < g - 1 ? i : g - 2;
        w->fx[x] = f * f * (3 - 2 * f);
    }
    for (int y = r.y0; y < r.y1; y++) {
        float u = (y + 0.5f + oy) * inv;
        int i = (int)u;
        float f = u - i;
        w->iy[y] = i < g - 1 ? i : g - 2;
        w->fy[y] = f * f * (3 - 2 * f);
    }
    for (int y = r.y0; y < r.y1; y++) {
        const float *l0 = w->lat + (size_t)w->iy[y] * g, *l1 = l0 + g;
        float fy = w->fy[y];
        float *o = out + (size_t)y * S;
        for (int x = r.x0; x < r.x1; x++) {
            int i = w->ix[x];
            float fx = w->fx[x];
            float top = l0[i] + fx * (l0[i + 1] - l0[i]);
            float bot = l1[i] + fx * (l1[i + 1] - l1[i]);
            o[x] = amp * (top + fy * (bot - top));
        }
    }
}

/* out += noise (same field as noise() would give). */
static void noise_add(work *w, float *out, rect r, float period, float amp, ml_rng *rng) {
    float *tmp = w->f3;
    noise(w, tmp, r, period, amp, rng);
    for (int y = r.y0; y < r.y1; y++)
        for (int x = r.x0; x < r.x1; x++) out[(size_t)y * w->S + x] += tmp[(size_t)y * w->S + x];
}

/* ----------------------------------------------------------------- textures --- */

/* What a texture is drawn with; the object's are the background's plus the gap. */
typedef struct tex {
    float scale;    /* multiplies every spatial period */
    float hue;      /* position in the habitat's palette, [0, 1] */
    float bright;   /* brightness factor */
    float contrast; /* amplitude of the pattern */
    float angle;    /* orientation, radians */
} tex;

static const float GREEN[3] = {0.20f, 0.45f, 0.12f}, BROWN[3] = {0.46f, 0.32f, 0.15f};
static const float TAN[3] = {0.68f, 0.54f, 0.35f}, YELLOW[3] = {0.90f, 0.78f, 0.50f};
static const float DEEP[3] = {0.03f, 0.19f, 0.40f}, TEAL[3] = {0.04f, 0.40f, 0.36f};
static const float LIGHT[3] = {0.50f, 0.85f, 0.80f};

static float lerp(float a, float b, float t) { return a + t * (b - a); }

/*
 * A texture is drawn from two noise streams: `shared` gives the low-frequency fields
 * (colour and brightness variation over the scene), drawn with the background's
 * parameters and the same seed for background and object, so an object matches the local
 * colour of the scene around it like a camouflaged animal; `own` gives the pattern (leaf
 * blobs, ripples, caustics), an independent realisation for the object with the object's
 * parameters. So at difficulty 1 the only cue is where the pattern breaks at the outline.
 */

/*
 * foliage: leaf field f = .5 N(P) + .3 N(P/2) + .2 N(P/4) with P = S/6 * scale (own; blobs
 * at three scales), leaf = smoothstep(-.08, .12, f); colour field g = N(S/4 * scale_bg)
 * (shared); shading h = N(P/3) (own);
 * rgb = mix(green, brown, hue + .55 g) * bright * (1 - .65 contrast (1 - leaf)) *
 * (1 + .2 contrast h).
 */
static void tex_foliage(work *w, const tex *t, const tex *bg, rect r, ml_rng *shared,
                        ml_rng *own, float *rgb) {
    int S = w->S;
    size_t plane = (size_t)S * S;
    float P = S / 6.0f * t->scale;
    noise(w, w->f2, r, S / 4.0f * bg->scale, 1, shared);
    noise(w, w->f1, r, P, 0.5f, own);
    noise_add(w, w->f1, r, P / 2, 0.3f, own);
    noise_add(w, w->f1, r, P / 4, 0.2f, own);
    noise(w, w->f3, r, P / 3, 1, own);
    for (int y = r.y0; y < r.y1; y++)
        for (int x = r.x0; x < r.x1; x++) {
            size_t p = (size_t)y * S + x;
            float leaf = smoothstep(-0.08f, 0.12f, w->f1[p]);
            float m = clamp01(t->hue + 0.55f * w->f2[p]);
            float shade = t->bright * (1 - 0.65f * t->contrast * (1 - leaf)) *
                          (1 + 0.2f * t->contrast * w->f3[p]);
            for (int c = 0; c < 3; c++) rgb[c * plane + p] = lerp(GREEN[c], BROWN[c], m) * shade;
        }
}

/*
 * sand: dunes b = .65 N(P) + .35 N(P/2.5) with P = .7 S * scale_bg (shared); ripples
 * q = sin(2 pi ((x cos a + y sin a) / L + phase + .7 N(.42 S * scale))) with
 * L = S/7 * scale, phase uniform (own), crests sharpened (q > 0 ? q : .4 q);
 * rgb = mix(tan, yellow, hue + .45 b) * bright * (1 + contrast (.12 q + .10 b))
 *       + .008 grain (own, per pixel).
 */
static void tex_sand(work *w, const tex *t, const tex *bg, rect r, ml_rng *shared, ml_rng *own,
                     uint64_t key, float *rgb) {
    int S = w->S;
    size_t plane = (size_t)S * S;
    float P = 0.7f * S * bg->scale, L = S / 7.0f * t->scale;
    noise(w, w->f1, r, P, 0.65f, shared);
    noise_add(w, w->f1, r, P / 2.5f, 0.35f, shared);
    float phase = unif(own, 0, 1);
    noise(w, w->f2, r, 0.42f * S * t->scale, 0.7f, own);
    float ca = cosf(t->angle) / L, sa = sinf(t->angle) / L;
    for (int y = r.y0; y < r.y1; y++)
        for (int x = r.x0; x < r.x1; x++) {
            size_t p = (size_t)y * S + x;
            float q = sin_cycles((x + 0.5f) * ca + (y + 0.5f) * sa + phase + w->f2[p]);
            q = q > 0 ? q : 0.4f * q;
            float b = w->f1[p];
            float m = clamp01(t->hue + 0.45f * b);
            float shade = t->bright * (1 + t->contrast * (0.12f * q + 0.10f * b));
            float gr = 0.008f * grain(key, x, y);
            for (int c = 0; c < 3; c++) rgb[c * plane + p] = lerp(TAN[c], YELLOW[c], m) * shade + gr;
        }
}

/*
 * underwater: warped coordinates (x, y) + .45 L (N(1.3 L), N(1.3 L)) with L = S/4.5 * scale
 * (own); s = sum over k = 0..3 of sin(2 pi ((x, y) . (cos a_k, sin a_k) / L_k + phi_k)),
 * a_k = angle + pi (k + U(-.35, .35)) / 4, L_k = L U(.8, 1.25), phi_k uniform (own);
 * caustic = max(0, 1 - |s| / 1.1)^2, the bright network where s crosses zero;
 * depth = 1.1 - .4 y / S; base = mix(deep, teal, hue + .35 N(S * scale_bg)) (shared);
 * rgb = base * depth * bright + .55 contrast caustic light.
 * Four waves at irregular angles, not three at 120 degrees: with k1 + k2 + k3 = 0 two of
 * the waves cancel along straight lines on which the third is constant, which draws long
 * straight ridges across the image.
 */
enum { WAVES = 4 };

static void tex_underwater(work *w, const tex *t, const tex *bg, rect r, ml_rng *shared,
                           ml_rng *own, float *rgb) {
    int S = w->S;
    size_t plane = (size_t)S * S;
    float L = S / 4.5f * t->scale;
    noise(w, w->f1, r, S * bg->scale, 1, shared);
    float dir[WAVES][2], ph[WAVES];
    for (int k = 0; k < WAVES; k++) {
        float a = t->angle + 3.14159265f * (k + unif(own, -0.35f, 0.35f)) / WAVES;
        float lk = L * unif(own, 0.8f, 1.25f);
        dir[k][0] = cosf(a) / lk;
        dir[k][1] = sinf(a) / lk;
        ph[k] = unif(own, 0, 1);
    }
    noise(w, w->f2, r, 1.3f * L, 0.45f * L, own);
    float *wy = w->f3; /* the last noise plane: noise_add is not used below */
    noise(w, wy, r, 1.3f * L, 0.45f * L, own);
    for (int y = r.y0; y < r.y1; y++)
        for (int x = r.x0; x < r.x1; x++) {
            size_t p = (size_t)y * S + x;
            float X = x + 0.5f + w->f2[p], Y = y + 0.5f + wy[p], s = 0;
            for (int k = 0; k < WAVES; k++) s += sin_cycles(X * dir[k][0] + Y * dir[k][1] + ph[k]);
            float v = 1 - fabsf(s) * (1 / 1.1f);
            float caustic = v > 0 ? v * v : 0;
            float depth = 1.1f - 0.4f * (y + 0.5f) / S;
            float m = clamp01(t->hue + 0.35f * w->f1[p]);
            for (int c = 0; c < 3; c++)
                rgb[c * plane + p] = lerp(DEEP[c], TEAL[c], m) * depth * t->bright +
                                     0.55f * t->contrast * caustic * LIGHT[c];
        }
}

/* The texture with parameters t over r; bg gives the shared fields' parameters. */
static void texture(work *w, int habitat, const tex *t, const tex *bg, rect r,
                    uint64_t shared_seed, uint64_t own_seed, float *rgb) {
    ml_rng shared, own;
    ml_rng_seed(&shared, shared_seed);
    ml_rng_seed(&own, own_seed);
    if (habitat == ML_CAMO_FOLIAGE) tex_foliage(w, t, bg, r, &shared, &own, rgb);
    else if (habitat == ML_CAMO_SAND) tex_sand(w, t, bg, r, &shared, &own, mix64(own_seed), rgb);
    else tex_underwater(w, t, bg, r, &shared, &own, rgb);
}

/*
 * The background's parameters and the object's: obj = bg + (1 - difficulty) * gap, where
 * the gap moves every parameter at once by a fixed amount (scale x2^(+-1), hue +-.45,
 * brightness x(1 +- .45), contrast x(1 +- .5), angle +-.9 rad), the others at random but
 * hue towards the far end of the palette and brightness up for the dark habitats (a
 * darker object hides in foliage's gaps and deep water), away from clipping for sand.
 * At difficulty 1 only the pattern's realisation differs.
 */
static void draw_params(ml_rng *r, int habitat, double difficulty, tex *bg, tex *obj) {
    bg->scale = expf(unif(r, -0.15f, 0.15f));
    bg->hue = unif(r, 0.25f, 0.75f);
    bg->bright = unif(r, 0.88f, 1.08f);
    bg->contrast = unif(r, 0.85f, 1.15f);
    bg->angle = unif(r, 0, 3.14159265f);
    float sgn[5];
    for (int k = 0; k < 5; k++) sgn[k] = ml_rng_uniform(r) < 0.5 ? -1.0f : 1.0f;
    sgn[1] = bg->hue < 0.5f ? 1.0f : -1.0f;
    sgn[2] = habitat != ML_CAMO_SAND || bg->bright < 0.98f ? 1.0f : -1.0f;
    float g = (float)(1 - difficulty);
    obj->scale = bg->scale * exp2f(g * sgn[0]);
    obj->hue = clamp01(bg->hue + g * 0.45f * sgn[1]);
    obj->bright = bg->bright * (1 + g * 0.45f * sgn[2]);
    obj->contrast = bg->contrast * (1 + g * 0.5f * sgn[3]);
    obj->angle = bg->angle + g * 0.9f * sgn[4];
}

/* ------------------------------------------------------------------- shapes --- */

enum { SHAPE_BLOB, SHAPE_ELLIPSE, SHAPE_POLYGON, MAX_VERTS = 9, HARMONICS = 4 };

typedef struct shape {
    int kind;
    float cx, cy, R;                    /* centre and equivalent radius */
    float hc[HARMONICS], hs[HARMONICS]; /* blob: r = R (1 + sum a_k cos(k th + phi_k)),
                                           k = 2..5, as a_k cos phi_k and a_k sin phi_k */
    float ea, eb, ec, es;               /* ellipse: semi-axes and rotation cos, sin */
    int nv;                             /* polygon vertices */
    float vx[MAX_VERTS], vy[MAX_VERTS];
    float reach;                        /* no point of the shape is farther from the centre */
} shape;

static void shape_draw(ml_rng *r, int S, shape *sh) {
    memset(sh, 0, sizeof *sh);
    float area = 0.04f * expf(unif(r, 0, logf(6.25f))); /* 4% .. 25% of the image */
    sh->R = S * sqrtf(area / 3.14159265f);
    sh->kind = (int)(ml_rng_uniform(r) * 3);
    float m = 0.6f * sh->R;
    sh->cx = unif(r, m, S - m);
    sh->cy = unif(r, m, S - m);
    if (sh->kind == SHAPE_BLOB) {
        float sum = 0;
        for (int k = 0; k < HARMONICS; k++) {
            float a = unif(r, 0, 0.32f) / (1 + 0.5f * k), phi = unif(r, 0, TWO_PI);
            sum += a;
            sh->hc[k] = a * cosf(phi);
            sh->hs[k] = a * sinf(phi);
        }
        sh->reach = sh->R * (1 + sum);
    } else if (sh->kind == SHAPE_ELLIPSE) {
        float e = unif(r, 1, 2.6f), rot = unif(r, 0, 3.14159265f);
        sh->ea = sh->R * sqrtf(e);
        sh->eb = sh->R / sqrtf(e);
        sh->ec = cosf(rot);
        sh->es = sinf(rot);
        sh->reach = sh->ea;
    } else {
        sh->nv = 5 + (int)(ml_rng_uniform(r) * 5); /* 5..9 */
        float rot = unif(r, 0, TWO_PI), step = TWO_PI / sh->nv;
        for (int j = 0; j < sh->nv; j++) {
            float a = rot + step * (j + unif(r, -0.3f, 0.3f)), rad = sh->R * unif(r, 0.7f, 1.35f);
            sh->vx[j] = sh->cx + rad * cosf(a);
            sh->vy[j] = sh->cy + rad * sinf(a);
            if (rad > sh->reach) sh->reach = rad;
        }
    }
}

static int shape_inside(const shape *sh, float px, float py) {
    float dx = px - sh->cx, dy = py - sh->cy;
    if (sh->kind == SHAPE_BLOB) {
        float rho2 = dx * dx + dy * dy;
        if (rho2 == 0) return 1;
        float rho = sqrtf(rho2), c1 = dx / rho, s1 = dy / rho;
        /* cos(k th), sin(k th) by complex powers, from k = 2 */
        float ck = c1 * c1 - s1 * s1, sk = 2 * c1 * s1, rr = 1;
        for (int k = 0; k < HARMONICS; k++) {
            rr += sh->hc[k] * ck - sh->hs[k] * sk; /* a (cos k th cos phi - sin k th sin phi) */
            float nc = ck * c1 - sk * s1;
            sk = sk * c1 + ck * s1;
            ck = nc;
        }
        return rho < sh->R * rr;
    }
    if (sh->kind == SHAPE_ELLIPSE) {
        float u = (dx * sh->ec + dy * sh->es) / sh->ea, v = (-dx * sh->es + dy * sh->ec) / sh->eb;
        return u * u + v * v < 1;
    }
    int in = 0; /* crossing number */
    for (int i = 0, j = sh->nv - 1; i < sh->nv; j = i++)
        if ((sh->vy[i] > py) != (sh->vy[j] > py) &&
            px < (sh->vx[j] - sh->vx[i]) * (py - sh->vy[i]) / (sh->vy[j] - sh->vy[i]) + sh->vx[i])
            in = !in;
    return in;
}

/* Rasterises sh at pixel centres into m (S, S) bytes; returns the covered pixels and the
 * bounding box of the object. */
static int64_t shape_raster(const shape *sh, int S, uint8_t *m, rect *box) {
    memset(m, 0, (size_t)S * S);
    int x0 = (int)floorf(sh->cx - sh->reach) - 1, x1 = (int)ceilf(sh->cx + sh->reach) + 1;
    int y0 = (int)floorf(sh->cy - sh->reach) - 1, y1 = (int)ceilf(sh->cy + sh->reach) + 1;
    x0 = x0 < 0 ? 0 : x0;
    y0 = y0 < 0 ? 0 : y0;
    x1 = x1 > S ? S : x1;
    y1 = y1 > S ? S : y1;
    int64_t count = 0;
    *box = (rect){S, S, 0, 0};
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++)
            if (shape_inside(sh, x + 0.5f, y + 0.5f)) {
                m[(size_t)y * S + x] = 1;
                count++;
                if (x < box->x0) box->x0 = x;
                if (x >= box->x1) box->x1 = x + 1;
                if (y < box->y0) box->y0 = y;
                if (y >= box->y1) box->y1 = y + 1;
            }
    return count;
}

/* ------------------------------------------------------------------- sample --- */

int ml_camo_sample(const ml_camo_cfg *c, int64_t index, float *rgb, float *mask) {
    if (index < 0 || c->n_habitats < 1 || c->n_habitats > ML_CAMO_HABITATS ||
        c->size < ML_CAMO_MIN_SIZE || c->size > ML_CAMO_MAX_SIZE)
        return -1; /* not a config from ml_camo_cfg_init, or no such sample */
    int S = c->size, label = (int)(index % c->n_habitats), habitat = c->habitat[label];
    size_t plane = (size_t)S * S;
    work w = {.S = S};
    int g = (int)(S / MIN_PERIOD) + 3;
    w.lat_cap = (size_t)g * g;
    /* one block: f1 f2 f3 (planes), object rgb (3 planes), lattice, tables, mask bytes */
    size_t floats = 6 * plane + w.lat_cap + 2 * (size_t)S;
    float *block = malloc(floats * sizeof(float) + 2 * (size_t)S * sizeof(int32_t) + plane);
    if (!block) return -1;
    w.f1 = block;
    w.f2 = w.f1 + plane;
    w.f3 = w.f2 + plane;
    float *orgb = w.f3 + plane;
    w.lat = orgb + 3 * plane;
    w.fx = w.lat + w.lat_cap;
    w.fy = w.fx + S;
    w.ix = (int32_t *)(w.fy + S);
    w.iy = w.ix + S;
    uint8_t *m = (uint8_t *)(w.iy + S);

    ml_rng rp, rs;
    ml_rng_seed(&rp, stream_seed(c, index, STREAM_PARAM));
    ml_rng_seed(&rs, stream_seed(c, index, STREAM_SHAPE));
    tex bg, obj;
    draw_params(&rp, habitat, c->difficulty, &bg, &obj);
    /* an object of 2% .. 45% of the image: a shape clipped by the border or too thin is
     * drawn again; after 16 tries a centred disc of 10% (never reached in practice) */
    shape sh;
    rect box;
    int64_t lo = (int64_t)ceil(0.02 * plane), hi = (int64_t)(0.45 * plane), got = 0;
    for (int tries = 0; tries < 16 && (got < lo || got > hi); tries++) {
        shape_draw(&rs, S, &sh);
        got = shape_raster(&sh, S, m, &box);
    }
    if (got < lo || got > hi) {
        memset(&sh, 0, sizeof sh);
        sh.kind = SHAPE_ELLIPSE;
        sh.cx = sh.cy = S / 2.0f;
        sh.R = sh.ea = sh.eb = sh.reach = S * sqrtf(0.1f / 3.14159265f);
        sh.ec = 1;
        shape_raster(&sh, S, m, &box);
    }

    rect all = {0, 0, S, S};
    uint64_t shared = stream_seed(c, index, STREAM_SHARED);
    texture(&w, habitat, &bg, &bg, all, shared, stream_seed(c, index, STREAM_BG), rgb);
    texture(&w, habitat, &obj, &bg, box, shared, stream_seed(c, index, STREAM_OBJ), orgb);
    for (int y = box.y0; y < box.y1; y++)
        for (int x = box.x0; x < box.x1; x++) {
            size_t p = (size_t)y * S + x;
            if (m[p])
                for (int ch = 0; ch < 3; ch++) rgb[ch * plane + p] = orgb[ch * plane + p];
        }
    for (size_t k = 0; k < 3 * plane; k++) rgb[k] = clamp01(rgb[k]);
    if (mask)
        for (size_t p = 0; p < plane; p++) mask[p] = m[p];
    free(block);
    return label;
}

/* ------------------------------------------------------------------- source --- */

static int camo_read(const ml_data_src *s, int64_t i, float *x, float *mask, int report) {
    if (ml_camo_sample(s->state, i, x, mask) >= 0) return ML_OK;
    return report ? ml_errorf("camouflage: out of memory generating sample %lld", (long long)i)
                  : ML_ERR;
}

int ml_data_src_camouflage(ml_data_src *s, const ml_camo_cfg *c, int64_t n) {
    memset(s, 0, sizeof *s);
    if (n < 1 || n > INT32_MAX)
        return ml_errorf("camouflage: %lld samples, expected 1..%d", (long long)n, INT32_MAX);
    ml_camo_cfg *state = ml_calloc(1, sizeof *state);
    s->y = ml_calloc((size_t)n, sizeof *s->y);
    s->class_names = ml_calloc((size_t)c->n_habitats, sizeof *s->class_names);
    if (!state || !s->y || !s->class_names) {
        free(state);
        ml_data_src_free(s);
        return ML_ERR;
    }
    *state = *c;
    s->state = state;
    s->num_classes = c->n_habitats;
    for (int k = 0; k < c->n_habitats; k++)
        if (!(s->class_names[k] = ml_strdup(habitat_names[c->habitat[k]]))) {
            ml_data_src_free(s);
            return ML_ERR;
        }
    for (int64_t i = 0; i < n; i++) s->y[i] = (int32_t)(i % c->n_habitats);
    s->n = n;
    s->C = 3;
    s->H = s->W = c->size;
    s->has_mask = 1;
    s->read = camo_read;
    return ML_OK;
}
