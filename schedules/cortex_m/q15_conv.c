/* int16 im2col convolution and pooling; see q15_conv.h. */
#include "q15_conv.h"

#include "q15_fc.h"

void scalpel_im2col_q15(const int16_t *x, const struct scalpel_window *g, int oy, int ox,
                        int16_t *col) {
  const int y0 = oy * g->stride_h - g->pad_top, x0 = ox * g->stride_w - g->pad_left;
  for (int c = 0; c < g->c; ++c) {
    const int16_t *plane = x + (int32_t)c * g->h * g->w;
    for (int ky = 0; ky < g->kh; ++ky) {
      const int iy = y0 + ky;
      if (iy < 0 || iy >= g->h) {
        for (int kx = 0; kx < g->kw; ++kx) *col++ = 0;
        continue;
      }
      const int16_t *row = plane + iy * g->w;
      if (x0 >= 0 && x0 + g->kw <= g->w) {  /* inside the image: a plain copy */
        for (int kx = 0; kx < g->kw; ++kx) *col++ = row[x0 + kx];
        continue;
      }
      for (int kx = 0; kx < g->kw; ++kx) {
        const int ix = x0 + kx;
        *col++ = (ix >= 0 && ix < g->w) ? row[ix] : 0;
      }
    }
  }
}

/* Each output pixel: its column, then the FC kernel writing N outputs a plane apart. */
#define FOR_EACH_PIXEL(call)                                   \
  const int k = g->c * g->kh * g->kw, plane = g->oh * g->ow;   \
  for (int oy = 0; oy < g->oh; ++oy)                           \
    for (int ox = 0; ox < g->ow; ++ox) {                       \
      scalpel_im2col_q15(x, g, oy, ox, col);                   \
      int16_t *out = y + oy * g->ow + ox;                      \
      call;                                                    \
    }

void scalpel_conv_q15_dense(const int16_t *x, const struct scalpel_window *g, const int16_t *w,
                            const int32_t *bias, int16_t *col, int16_t *y, int n, int shift,
                            int relu) {
  FOR_EACH_PIXEL(scalpel_fc_q15_dense(col, w, bias, out, plane, k, n, shift, relu))
}

void scalpel_conv_q15_gsparse2(const int16_t *x, const struct scalpel_window *g,
                               const int32_t *indptr, const uint16_t *indices,
                               const int16_t *values, const int32_t *bias, int16_t *col,
                               int16_t *y, int n, int shift, int relu) {
  FOR_EACH_PIXEL(
      scalpel_fc_q15_gsparse2(col, indptr, indices, values, bias, out, plane, k, n, shift, relu))
}

void scalpel_conv_q15_gsparse2_delta(const int16_t *x, const struct scalpel_window *g,
                                     const int32_t *indptr, const uint8_t *steps,
                                     const int16_t *values, const int32_t *bias, int16_t *col,
                                     int16_t *y, int n, int shift, int relu) {
  FOR_EACH_PIXEL(scalpel_fc_q15_gsparse2_delta(col, indptr, steps, values, bias, out, plane, k, n,
                                               shift, relu))
}

void scalpel_conv_q15_csr(const int16_t *x, const struct scalpel_window *g, const int32_t *indptr,
                          const uint16_t *indices, const int16_t *values, const int32_t *bias,
                          int16_t *col, int16_t *y, int n, int shift, int relu) {
  FOR_EACH_PIXEL(
      scalpel_fc_q15_csr(col, indptr, indices, values, bias, out, plane, k, n, shift, relu))
}

/* The window of output (oy, ox) clipped to the image: rows [*y0, *y1), columns [*x0, *x1). */
static void clip_window(const struct scalpel_window *g, int oy, int ox, int *y0, int *y1, int *x0,
                        int *x1) {
  *y0 = oy * g->stride_h - g->pad_top;
  *x0 = ox * g->stride_w - g->pad_left;
  *y1 = *y0 + g->kh < g->h ? *y0 + g->kh : g->h;
  *x1 = *x0 + g->kw < g->w ? *x0 + g->kw : g->w;
  if (*y0 < 0) *y0 = 0;
  if (*x0 < 0) *x0 = 0;
  if (*y1 < *y0) *y1 = *y0;  /* wholly over the padding: empty */
  if (*x1 < *x0) *x1 = *x0;
}

void scalpel_maxpool_q15(const int16_t *x, const struct scalpel_window *g, int16_t *y) {
  for (int c = 0; c < g->c; ++c, x += g->h * g->w)
    for (int oy = 0; oy < g->oh; ++oy)
      for (int ox = 0; ox < g->ow; ++ox) {
        int y0, y1, x0, x1;
        clip_window(g, oy, ox, &y0, &y1, &x0, &x1);
        int16_t best = -32767;
        for (int iy = y0; iy < y1; ++iy)
          for (int ix = x0; ix < x1; ++ix)
            if (x[iy * g->w + ix] > best) best = x[iy * g->w + ix];
        *y++ = best;
      }
}

/* floor(num / den) for den > 0 (C's division truncates toward zero). */
static int32_t floor_div(int32_t num, int32_t den) {
  int32_t q = num / den;
  return (num % den != 0 && num < 0) ? q - 1 : q;
}

void scalpel_avgpool_q15(const int16_t *x, const struct scalpel_window *g, int count_include_pad,
                         int16_t *y) {
  for (int c = 0; c < g->c; ++c, x += g->h * g->w)
    for (int oy = 0; oy < g->oh; ++oy)
      for (int ox = 0; ox < g->ow; ++ox) {
        int y0, y1, x0, x1;
        clip_window(g, oy, ox, &y0, &y1, &x0, &x1);
        int32_t sum = 0;
        for (int iy = y0; iy < y1; ++iy)
          for (int ix = x0; ix < x1; ++ix) sum += x[iy * g->w + ix];
        const int32_t count = count_include_pad ? g->kh * g->kw : (y1 - y0) * (x1 - x0);
        *y++ = count ? (int16_t)floor_div(2 * sum + count, 2 * count) : 0;  /* all padding: 0 */
      }
}
