/* The one tvm-ffi runtime symbol that TVM's C for the network (network_tvm.c) calls: its argument
 * checks report a mismatch through it before returning -1. There is no TVM runtime on the board,
 * so the message is printed (semihosting) and the caller stops. */
#include <stdio.h>

#include "tvm/ffi/c_api.h"

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **message_parts,
                                       int32_t num_parts) {
  printf("%s: ", kind);
  for (int32_t i = 0; i < num_parts; ++i) {
    if (message_parts[i]) printf("%s", message_parts[i]);
  }
  printf("\n");
}
