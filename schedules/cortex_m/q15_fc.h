/* int16 (q15-style) fully-connected micro-kernels for Cortex-M4/M7 (DSP extension) and the host.
 *
 * Arithmetic, identical on every machine (scalpel_tvm/fixed_point.py is its numpy reference):
 *   - activations and weights are int16 in [-32767, 32767] (symmetric: a pair of products
 *     then always fits in int32, so SMUAD cannot overflow);
 *   - products of a pair of inputs are added with one dual 16-bit multiply (SMUAD) and
 *     accumulated with a saturating add (QADD) into an int32 that starts at the bias;
 *   - the output is the accumulator shifted right by `shift` with rounding (half up), ReLU'd if
 *     asked, and saturated to [-32767, 32767].
 * On a core with the DSP extension (__ARM_FEATURE_DSP) the pair step is __SMUAD + __QADD; elsewhere
 * portable C computes the same values.
 */
#ifndef SCALPEL_Q15_FC_H_
#define SCALPEL_Q15_FC_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every kernel writes output o to y[o * y_stride]: 1 for an FC layer; a conv layer (q15_conv.h)
 * calls them once per output pixel with the pixel count, so its output stays channel-major (CHW). */

/* y[n] for one input vector x[k]: dense weight w[n * k + i] (row-major [N][K]). */
void scalpel_fc_q15_dense(const int16_t *x, const int16_t *w, const int32_t *bias, int16_t *y,
                          int y_stride, int k, int n, int shift, int relu);

/* Grouped-sparse with groups of 2 consecutive inputs of one output (Scalpel's 1xG with G = 2):
 * output n's groups are j in [indptr[n], indptr[n+1]); group j holds values[2j], values[2j+1]
 * for inputs indices[j], indices[j] + 1 (any start, aligned or not, up to k - 2: a group that
 * would start at the last input is stored one earlier as (0, w), see scalpel_tvm/cortex_m.py's
 * `pairs`). One 16-bit index per pair (inputs < 65536), one SMUAD per pair. */
void scalpel_fc_q15_gsparse2(const int16_t *x, const int32_t *indptr, const uint16_t *indices,
                             const int16_t *values, const int32_t *bias, int16_t *y,
                             int y_stride, int k, int n, int shift, int relu);

/* The pairs above with 8-bit steps in place of 16-bit indices (5 bytes a pair, not 6): pair j
 * starts steps[j] inputs after the previous pair of its output (the first after input 0). A gap
 * over 255 inputs is bridged by zero pairs (see scalpel_tvm/cortex_m.py's `pair_steps`). Steps
 * are read four to a word: little-endian cores only (every Cortex-M here, and x86 hosts). */
void scalpel_fc_q15_gsparse2_delta(const int16_t *x, const int32_t *indptr, const uint8_t *steps,
                                   const int16_t *values, const int32_t *bias, int16_t *y,
                                   int y_stride, int k, int n, int shift, int relu);

/* CSR (traditional pruning): output n's weights values[j] at inputs indices[j],
 * j in [indptr[n], indptr[n+1]); one index and one scalar MAC per weight. */
void scalpel_fc_q15_csr(const int16_t *x, const int32_t *indptr, const uint16_t *indices,
                        const int16_t *values, const int32_t *bias, int16_t *y, int y_stride,
                        int k, int n, int shift, int relu);

#ifdef __cplusplus
}
#endif

#endif /* SCALPEL_Q15_FC_H_ */
