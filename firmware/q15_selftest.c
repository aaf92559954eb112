/* Runs the int16 FC kernels on the layers of a generated header (SCALPEL_LAYERS) and prints every
 * output over semihosting, one line per layer and input row: "y <layer> <row> v0 v1 ...".
 * scalpel_tvm/cortex_m.py writes the header, builds this and compares the lines with the numpy
 * reference. */
#include <stdio.h>

#include "q15_fc.h"
#include SCALPEL_LAYERS

int main(void) {
  int16_t y[SCALPEL_MAX_N];
  for (int l = 0; l < SCALPEL_NUM_LAYERS; ++l) {
    const struct scalpel_layer *L = &scalpel_layers[l];
    for (int r = 0; r < L->batch; ++r) {
      const int16_t *x = L->x + r * L->k;
      if (L->kind == 0)
        scalpel_fc_q15_dense(x, L->values, L->bias, y, L->k, L->n, L->shift, L->relu);
      else if (L->kind == 1)
        scalpel_fc_q15_gsparse2(x, L->indptr, L->indices, L->values, L->bias, y, L->k, L->n,
                                L->shift, L->relu);
      else
        scalpel_fc_q15_csr(x, L->indptr, L->indices, L->values, L->bias, y, L->k, L->n, L->shift,
                           L->relu);
      printf("y %d %d", l, r);
      for (int o = 0; o < L->n; ++o) printf(" %d", y[o]);
      printf("\n");
    }
  }
  printf("done\n");
  return 0;
}
