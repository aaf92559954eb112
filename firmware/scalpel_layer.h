/* One int16 FC layer as the generated headers describe it, and the kernel call for its format. */
#ifndef SCALPEL_LAYER_H_
#define SCALPEL_LAYER_H_

#include <stdint.h>

#include "q15_fc.h"

enum { SCALPEL_DENSE = 0, SCALPEL_PAIRS = 1, SCALPEL_CSR = 2 };

struct scalpel_layer {
  int kind, batch, k, n, shift, relu;
  const int16_t *x;       /* the self-test's inputs (batch x k); unused by the network runner */
  const int32_t *indptr;  /* pairs / CSR */
  const uint16_t *indices; /* pairs / CSR */
  const int16_t *values;  /* dense: the [n][k] weight; pairs: 2 per group; CSR: 1 per weight */
  const int32_t *bias;    /* or 0 */
};

static inline void scalpel_run_layer(const struct scalpel_layer *L, const int16_t *x, int16_t *y) {
  if (L->kind == SCALPEL_DENSE)
    scalpel_fc_q15_dense(x, L->values, L->bias, y, L->k, L->n, L->shift, L->relu);
  else if (L->kind == SCALPEL_PAIRS)
    scalpel_fc_q15_gsparse2(x, L->indptr, L->indices, L->values, L->bias, y, L->k, L->n, L->shift,
                            L->relu);
  else
    scalpel_fc_q15_csr(x, L->indptr, L->indices, L->values, L->bias, y, L->k, L->n, L->shift,
                       L->relu);
}

#endif /* SCALPEL_LAYER_H_ */
