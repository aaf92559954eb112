/* Runs an int16 network from a generated header (SCALPEL_LAYERS: the layers in flash, in their
 * storage formats, and a batch of inputs) and prints each input's outputs over semihosting:
 * "y <row> v0 v1 ...". scalpel_infer (one input) is also what scalpel_tvm/cycles.py runs to
 * count cycles.
 *
 * Activations live in one arena used from both ends: the input is copied to its start, and layer
 * l writes its output at the end when l is even and at the start when l is odd, so a layer's
 * input and output never overlap and the arena needs only max(input + output) over the layers
 * (SCALPEL_ARENA, computed by scalpel_tvm/cortex_m.py), not two buffers of the largest tensor. */
#include <stdio.h>
#include <string.h>

#include "scalpel_layer.h"
#include SCALPEL_LAYERS

static int16_t arena[SCALPEL_ARENA];
static int16_t col[SCALPEL_MAX_COL];

/* One input through every layer; returns where the outputs are. */
__attribute__((noinline, used)) const int16_t *scalpel_infer(const int16_t *input) {
  memcpy(arena, input, sizeof(int16_t) * SCALPEL_INPUT_SIZE);
  const int16_t *x = arena;
  for (int l = 0; l < SCALPEL_NUM_LAYERS; ++l) {
    int16_t *y = l % 2 == 0 ? arena + SCALPEL_ARENA - scalpel_out_size[l] : arena;
    scalpel_run_layer(&scalpel_layers[l], x, y, col);
    x = y;
  }
  return x;
}

/* Layer l alone, on whatever the arena holds: what scalpel_tvm/m4_cost.py's calibration prices
 * (the kernels' work does not depend on the values). */
__attribute__((noinline, used)) void scalpel_layer_step(int l) {
  const int16_t *x = l % 2 == 0 ? arena : arena + SCALPEL_ARENA - scalpel_in_size[l];
  int16_t *y = l % 2 == 0 ? arena + SCALPEL_ARENA - scalpel_out_size[l] : arena;
  scalpel_run_layer(&scalpel_layers[l], x, y, col);
}

int main(void) {
  for (int r = 0; r < SCALPEL_BATCH; ++r) {
    const int16_t *y = scalpel_infer(scalpel_inputs + r * SCALPEL_INPUT_SIZE);
    printf("y %d", r);
    for (int o = 0; o < scalpel_out_size[SCALPEL_NUM_LAYERS - 1]; ++o) printf(" %d", y[o]);
    printf("\n");
  }
  printf("done\n");
  return 0;
}
