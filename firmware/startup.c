/* Minimal Cortex-M4 start-up: vector table, .data copy, .bss zeroing, FPU on, semihosting I/O. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern void initialise_monitor_handles(void);  /* newlib's rdimon: stdio over semihosting */
int main(void);

void Reset_Handler(void) {
  for (uint32_t *src = &_sidata, *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;  /* CPACR: full access to CP10/CP11 (the FPU) */
  __asm volatile("dsb\n\tisb");
  initialise_monitor_handles();
  exit(main());
}

static void Fault_Handler(void) {
  for (;;) {
  }
}

__attribute__((section(".isr_vector"), used)) static const void *const vectors[16] = {
    &_estack, (void *)Reset_Handler, (void *)Fault_Handler, (void *)Fault_Handler,
    (void *)Fault_Handler, (void *)Fault_Handler, (void *)Fault_Handler,
};
