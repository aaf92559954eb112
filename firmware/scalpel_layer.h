/* One int16 layer as the generated headers describe it, and the kernel call for its op and format. */
#ifndef SCALPEL_LAYER_H_
#define SCALPEL_LAYER_H_

#include <stdint.h>

#include "q15_conv.h"
#include "q15_fc.h"

enum { SCALPEL_FC = 0, SCALPEL_CONV = 1, SCALPEL_MAXPOOL = 2, SCALPEL_AVGPOOL = 3 };  /* ops */
enum { SCALPEL_DENSE = 0, SCALPEL_PAIRS = 1, SCALPEL_CSR = 2, SCALPEL_PAIRS_DELTA = 3 };  /* weight formats */

struct scalpel_layer {
  int op, kind, batch, k, n, shift, relu;  /* avgpool: relu holds count_include_pad */
  struct scalpel_window win;  /* conv and pooling only */
  const int16_t *x;        /* the self-test's inputs (batch x input size); unused by the network */
  const int32_t *indptr;   /* pairs / CSR */
  const uint16_t *indices; /* pairs / CSR */
  const uint8_t *steps;    /* pairs with 8-bit steps */
  const int16_t *values;   /* dense: the [n][k] weight; pairs: 2 per group; CSR: 1 per weight */
  const int32_t *bias;     /* or 0 */
};

/* y = layer(x); col is im2col scratch of the layer's K values (conv only). */
static inline void scalpel_run_layer(const struct scalpel_layer *L, const int16_t *x, int16_t *y,
                                     int16_t *col) {
  const struct scalpel_window *g = &L->win;
  if (L->op == SCALPEL_MAXPOOL) {
    scalpel_maxpool_q15(x, g, y);
  } else if (L->op == SCALPEL_AVGPOOL) {
    scalpel_avgpool_q15(x, g, L->relu, y);
  } else if (L->op == SCALPEL_CONV) {
    if (L->kind == SCALPEL_DENSE)
      scalpel_conv_q15_dense(x, g, L->values, L->bias, col, y, L->n, L->shift, L->relu);
    else if (L->kind == SCALPEL_PAIRS)
      scalpel_conv_q15_gsparse2(x, g, L->indptr, L->indices, L->values, L->bias, col, y, L->n,
                                L->shift, L->relu);
    else if (L->kind == SCALPEL_PAIRS_DELTA)
      scalpel_conv_q15_gsparse2_delta(x, g, L->indptr, L->steps, L->values, L->bias, col, y, L->n,
                                      L->shift, L->relu);
    else
      scalpel_conv_q15_csr(x, g, L->indptr, L->indices, L->values, L->bias, col, y, L->n,
                           L->shift, L->relu);
  } else if (L->kind == SCALPEL_DENSE) {
    scalpel_fc_q15_dense(x, L->values, L->bias, y, 1, L->k, L->n, L->shift, L->relu);
  } else if (L->kind == SCALPEL_PAIRS) {
    scalpel_fc_q15_gsparse2(x, L->indptr, L->indices, L->values, L->bias, y, 1, L->k, L->n,
                            L->shift, L->relu);
  } else if (L->kind == SCALPEL_PAIRS_DELTA) {
    scalpel_fc_q15_gsparse2_delta(x, L->indptr, L->steps, L->values, L->bias, y, 1, L->k, L->n,
                                  L->shift, L->relu);
  } else {
    scalpel_fc_q15_csr(x, L->indptr, L->indices, L->values, L->bias, y, 1, L->k, L->n, L->shift,
                       L->relu);
  }
}

#endif /* SCALPEL_LAYER_H_ */
