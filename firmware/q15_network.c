/* Runs an int16 FC network from a generated header (SCALPEL_LAYERS: the layers in flash, in their
 * storage formats, and a batch of inputs) and prints each input's outputs over semihosting:
 * "y <row> v0 v1 ...". Activations ping-pong between two buffers of the widest layer.
 * scalpel_infer (one input) is also what scalpel_tvm/cycles.py runs to count cycles. */
#include <stdio.h>

#include "scalpel_layer.h"
#include SCALPEL_LAYERS

static int16_t buffers[2][SCALPEL_MAX_WIDTH];

/* One input through every layer; returns the buffer holding the outputs. */
__attribute__((noinline, used)) const int16_t *scalpel_infer(const int16_t *x) {
  int16_t *y = buffers[0];
  for (int l = 0; l < SCALPEL_NUM_LAYERS; ++l) {
    y = buffers[l % 2];
    scalpel_run_layer(&scalpel_layers[l], x, y);
    x = y;
  }
  return y;
}

int main(void) {
  for (int r = 0; r < SCALPEL_BATCH; ++r) {
    const int16_t *y = scalpel_infer(scalpel_inputs + r * scalpel_layers[0].k);
    printf("y %d", r);
    for (int o = 0; o < scalpel_layers[SCALPEL_NUM_LAYERS - 1].n; ++o) printf(" %d", y[o]);
    printf("\n");
  }
  printf("done\n");
  return 0;
}
