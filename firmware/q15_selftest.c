/* Runs the int16 kernels on the layers of a generated header (SCALPEL_LAYERS) and prints every
 * output over semihosting, one line per layer and input row: "y <layer> <row> v0 v1 ...".
 * scalpel_tvm/cortex_m.py writes the header, builds this and compares the lines with the numpy
 * reference. */
#include <stdio.h>

#include "scalpel_layer.h"
#include SCALPEL_LAYERS

int main(void) {
  static int16_t y[SCALPEL_MAX_OUT], col[SCALPEL_MAX_COL];
  for (int l = 0; l < SCALPEL_NUM_LAYERS; ++l) {
    const struct scalpel_layer *L = &scalpel_layers[l];
    for (int r = 0; r < L->batch; ++r) {
      scalpel_run_layer(L, L->x + r * scalpel_in_size[l], y, col);
      printf("y %d %d", l, r);
      for (int o = 0; o < scalpel_out_size[l]; ++o) printf(" %d", y[o]);
      printf("\n");
    }
  }
  printf("done\n");
  return 0;
}
