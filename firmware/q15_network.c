/* Runs an int16 network from a generated header (SCALPEL_LAYERS: the layers in flash, in their
 * storage formats, a batch of inputs, and the arguments of TVM's network function) and prints each
 * input's outputs over semihosting: "y <row> v0 v1 ...". scalpel_infer (one input) is also what
 * scalpel_tvm/cycles.py runs to count cycles.
 *
 * The network itself is TVM's: scalpel_tvm/network_tir.py writes it as a TIR function that calls
 * the micro-kernels layer by layer, and TVM's C code generator emits it (network_tvm.c) as the
 * tvm-ffi packed function __tvm_ffi_scalpel_network(arena, col, weights...). Activations live in
 * one arena used from both ends: the input is copied to its start, and layer l writes its output
 * at the end when l is even and at the start when l is odd, so a layer's input and output never
 * overlap and the arena needs only max(input + output) over the layers (SCALPEL_ARENA). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scalpel_layer.h"
#include SCALPEL_LAYERS

int32_t __tvm_ffi_scalpel_network(void *self, void *args, int32_t num_args, void *result);

/* One input through the network; returns where the outputs are. */
__attribute__((noinline, used)) const int16_t *scalpel_infer(const int16_t *input) {
  memcpy(scalpel_arena, input, sizeof(int16_t) * SCALPEL_INPUT_SIZE);
  if (__tvm_ffi_scalpel_network(0, (void *)scalpel_args, SCALPEL_NUM_ARGS, 0) != 0) {
    printf("scalpel_network refused its arguments\n");
    exit(1);
  }
  return scalpel_arena + SCALPEL_OUTPUT_OFFSET;
}

/* Layer l alone, on whatever the arena holds, with the layer table's kernel call
 * (scalpel_layer.h; the same kernels TVM's function calls): what scalpel_tvm/m4_cost.py's
 * calibration prices (the kernels' work does not depend on the values). */
__attribute__((noinline, used)) void scalpel_layer_step(int l) {
  const int16_t *x = l % 2 == 0 ? scalpel_arena : scalpel_arena + SCALPEL_ARENA - scalpel_in_size[l];
  int16_t *y = l % 2 == 0 ? scalpel_arena + SCALPEL_ARENA - scalpel_out_size[l] : scalpel_arena;
  scalpel_run_layer(&scalpel_layers[l], x, y, scalpel_col);
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
