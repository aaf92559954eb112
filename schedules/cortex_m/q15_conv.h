/* int16 convolution (im2col + the FC micro-kernels) and pooling for Cortex-M and the host.
 *
 * Tensors are one image, channel-major (CHW), int16. A convolution builds, for each output pixel,
 * the column of its receptive field (K = C * KH * KW values in (c, ky, kx) order, zero where the
 * window hangs over the padding) and multiplies it with the [N][K] weight in the layer's format:
 * dense, pairs (1x2 groups, one index and one SMUAD per pair) or CSR — so a conv layer is pruned
 * and stored exactly like an FC layer, and the arithmetic is q15_fc.h's. The output is [N][OH][OW].
 * scalpel_tvm/fixed_point.py is the numpy reference; both compute the same integers.
 */
#ifndef SCALPEL_Q15_CONV_H_
#define SCALPEL_Q15_CONV_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A sliding window over a C x H x W input: kernel KH x KW, strides, top/left padding, and the
 * output size OH x OW (which fixes the bottom/right padding). */
struct scalpel_window {
  int c, h, w, kh, kw, stride_h, stride_w, pad_top, pad_left, oh, ow;
};

/* The receptive field of output pixel (oy, ox): col[K], zeros over the padding. */
void scalpel_im2col_q15(const int16_t *x, const struct scalpel_window *g, int oy, int ox,
                        int16_t *col);

/* y[N][OH][OW] = conv(x) with a dense [N][K] weight; col is a scratch buffer of K values. */
void scalpel_conv_q15_dense(const int16_t *x, const struct scalpel_window *g, const int16_t *w,
                            const int32_t *bias, int16_t *col, int16_t *y, int n, int shift,
                            int relu);

/* The same with the weight as pairs (scalpel_fc_q15_gsparse2's format over K inputs). */
void scalpel_conv_q15_gsparse2(const int16_t *x, const struct scalpel_window *g,
                               const int32_t *indptr, const uint16_t *indices,
                               const int16_t *values, const int32_t *bias, int16_t *col,
                               int16_t *y, int n, int shift, int relu);

/* The same with the weight as pairs with 8-bit steps (scalpel_fc_q15_gsparse2_delta's format). */
void scalpel_conv_q15_gsparse2_delta(const int16_t *x, const struct scalpel_window *g,
                                     const int32_t *indptr, const uint8_t *steps,
                                     const int16_t *values, const int32_t *bias, int16_t *col,
                                     int16_t *y, int n, int shift, int relu);

/* The same with the weight in CSR (scalpel_fc_q15_csr's format over K inputs). */
void scalpel_conv_q15_csr(const int16_t *x, const struct scalpel_window *g, const int32_t *indptr,
                          const uint16_t *indices, const int16_t *values, const int32_t *bias,
                          int16_t *col, int16_t *y, int n, int shift, int relu);

/* y[C][OH][OW]: the largest value in each window (padding never wins; a window wholly over the
 * padding, which ONNX models do not have, gives -32767). */
void scalpel_maxpool_q15(const int16_t *x, const struct scalpel_window *g, int16_t *y);

/* y[C][OH][OW]: the window's mean, rounded half up: floor((2 * sum + count) / (2 * count)),
 * where count is the window's in-image values, or KH * KW when count_include_pad (0 when the window
 * is wholly over the padding). */
void scalpel_avgpool_q15(const int16_t *x, const struct scalpel_window *g, int count_include_pad,
                         int16_t *y);

#ifdef __cplusplus
}
#endif

#endif /* SCALPEL_Q15_CONV_H_ */
