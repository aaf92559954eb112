/* int16 FC micro-kernels; see q15_fc.h for the arithmetic they share with the numpy reference. */
#include "q15_fc.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define HAVE_DSP 1
#else
#define HAVE_DSP 0
#endif

/* Every inner loop is unrolled 4 times, the same for every format: the loop's own overhead (an
 * add, a compare, a taken branch) is then paid once per 4 steps. */
#define UNROLL _Pragma("GCC unroll 4")

/* Two adjacent int16 as one 32-bit word (an LDR; unaligned starts are fine on M4/M7). */
static inline int32_t load_pair(const int16_t *p) {
  int32_t word;
  memcpy(&word, p, sizeof word);
  return word;
}

/* p[0] * q[0] + p[1] * q[1]: SMUAD. Cannot overflow for values in [-32767, 32767]. */
static inline int32_t pair_dot(const int16_t *p, const int16_t *q) {
#if HAVE_DSP
  return __smuad(load_pair(p), load_pair(q));
#else
  return (int32_t)p[0] * q[0] + (int32_t)p[1] * q[1];
#endif
}

/* Saturating int32 add: QADD. */
static inline int32_t sat_add(int32_t a, int32_t b) {
#if HAVE_DSP
  return __qadd(a, b);
#else
  int64_t s = (int64_t)a + b;
  return s > INT32_MAX ? INT32_MAX : s < INT32_MIN ? INT32_MIN : (int32_t)s;
#endif
}

/* (acc + 2^(shift-1)) >> shift without a 64-bit add: the last bit shifted out rounds up (a shift
 * past 31 leaves 0). Then ReLU and the symmetric int16 range. */
static inline int16_t finish(int32_t acc, int shift, int relu) {
  int32_t v = shift > 31 ? 0 : shift > 0 ? (acc >> shift) + ((acc >> (shift - 1)) & 1) : acc;
  if (relu && v < 0) v = 0;
  return (int16_t)(v > 32767 ? 32767 : v < -32767 ? -32767 : v);
}

void scalpel_fc_q15_dense(const int16_t *x, const int16_t *w, const int32_t *bias, int16_t *y,
                          int y_stride, int k, int n, int shift, int relu) {
  for (int o = 0; o < n; ++o) {
    const int16_t *row = w + (int32_t)o * k;
    int32_t acc = bias ? bias[o] : 0;
    int i = 0;
    UNROLL for (; i + 1 < k; i += 2) acc = sat_add(acc, pair_dot(row + i, x + i));
    if (i < k) acc = sat_add(acc, (int32_t)row[i] * x[i]);
    y[o * y_stride] = finish(acc, shift, relu);
  }
}

void scalpel_fc_q15_gsparse2(const int16_t *x, const int32_t *indptr, const uint16_t *indices,
                             const int16_t *values, const int32_t *bias, int16_t *y, int y_stride,
                             int k, int n, int shift, int relu) {
  (void)k;  /* every group starts at most at k - 2: both of its inputs exist */
  for (int o = 0; o < n; ++o) {
    int32_t acc = bias ? bias[o] : 0;
    UNROLL for (int32_t j = indptr[o]; j < indptr[o + 1]; ++j)
      acc = sat_add(acc, pair_dot(values + 2 * j, x + indices[j]));
    y[o * y_stride] = finish(acc, shift, relu);
  }
}

/* Four steps are read as one word (any alignment: an LDR) and taken apart with UXTAB/UBFX, so a
 * pair costs about what a 16-bit index does: one load a pair for the steps would be dearer. */
void scalpel_fc_q15_gsparse2_delta(const int16_t *x, const int32_t *indptr, const uint8_t *steps,
                                   const int16_t *values, const int32_t *bias, int16_t *y,
                                   int y_stride, int k, int n, int shift, int relu) {
  (void)k;
  for (int o = 0; o < n; ++o) {
    int32_t acc = bias ? bias[o] : 0;
    uint32_t i = 0;  /* the current pair's first input */
    int32_t j = indptr[o];
    const int32_t end = indptr[o + 1];
    for (; j + 4 <= end; j += 4) {
      uint32_t four;
      memcpy(&four, steps + j, sizeof four);  /* little-endian: steps j .. j+3 from the low byte */
      i += four & 0xff;
      acc = sat_add(acc, pair_dot(values + 2 * j, x + i));
      i += (four >> 8) & 0xff;
      acc = sat_add(acc, pair_dot(values + 2 * j + 2, x + i));
      i += (four >> 16) & 0xff;
      acc = sat_add(acc, pair_dot(values + 2 * j + 4, x + i));
      i += four >> 24;
      acc = sat_add(acc, pair_dot(values + 2 * j + 6, x + i));
    }
    switch (end - j) {  /* the last 0-3 pairs, without a loop's branches */
      case 3:
        i += steps[j];
        acc = sat_add(acc, pair_dot(values + 2 * j, x + i));
        ++j;
        /* fall through */
      case 2:
        i += steps[j];
        acc = sat_add(acc, pair_dot(values + 2 * j, x + i));
        ++j;
        /* fall through */
      case 1:
        i += steps[j];
        acc = sat_add(acc, pair_dot(values + 2 * j, x + i));
        break;
      default:
        break;
    }
    y[o * y_stride] = finish(acc, shift, relu);
  }
}

void scalpel_fc_q15_csr(const int16_t *x, const int32_t *indptr, const uint16_t *indices,
                        const int16_t *values, const int32_t *bias, int16_t *y, int y_stride,
                        int k, int n, int shift, int relu) {
  (void)k;
  for (int o = 0; o < n; ++o) {
    int32_t acc = bias ? bias[o] : 0;
    UNROLL for (int32_t j = indptr[o]; j < indptr[o + 1]; ++j)
      acc = sat_add(acc, (int32_t)values[j] * x[indices[j]]);
    y[o * y_stride] = finish(acc, shift, relu);
  }
}
