"""A deterministic cycle ESTIMATE for firmware on a Cortex-M4 — not a measurement.

QEMU is not cycle-accurate, and no board is attached here. So the firmware's `scalpel_infer`
(one input through the network) is executed instruction by instruction in unicorn (an emulator
built on QEMU's CPU models, with a hook on every instruction), each executed instruction is
decoded with capstone, and its cost is looked up in the Cortex-M4 timing table of Arm's
Technical Reference Manual (section 3.3, "Cortex-M4 instruction set summary"), simplified:

* data processing, multiplies (MUL, MLA, SMUAD, SMLAD, SMULBB, ...), saturating arithmetic
  (QADD, SSAT): 1 cycle;
* single loads and stores (LDR*, STR*): 2 (the TRM's 2, without the pipelining that makes
  back-to-back loads 1 — so the estimate leans pessimistic on load-heavy code);
* LDRD/STRD: 3; LDM/STM/PUSH/POP: 1 + registers (+ the branch refill when POP loads the PC);
* branches: 1 when not taken, 1 + 2 (a pipeline refill of 1 to 3, taken as 2) when taken;
* SDIV/UDIV: 7 (the TRM gives 2 to 12).

The same table prices every form, so ratios between forms (dense / pairs / CSR) are what it is
made for. Flash wait states, the bus matrix and caches (an M4 has none) are not modelled.
"""
from __future__ import annotations

import struct
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import ScalpelError

RETURN_ADDRESS = 0x0FFF_FFF0  # unmapped: the emulation stops when scalpel_infer returns here
REFILL = 2
CONDITIONS = {"eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al"}
BRANCHES = {"b", "bl", "bx", "blx", "cbz", "cbnz", "tbb", "tbh"}


@dataclass
class CycleCount:
    cycles: int
    instructions: int
    by_class: dict  # class -> cycles
    mnemonics: Counter  # base mnemonic -> times executed

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.by_class.items(), key=lambda kv: -kv[1]))
        return f"{self.cycles} cycles ({self.instructions} instructions: {parts})"


def base_mnemonic(mnemonic: str) -> str:
    """'ldrh.w' -> 'ldrh', 'bne' -> 'b', 'it' stays: the width and condition suffixes dropped."""
    base = mnemonic.split(".")[0]
    if base.startswith("b") and base[1:] in CONDITIONS:
        return "b"
    return base


def classify(insn) -> tuple[str, int]:
    """(class, cycles when not a taken branch) of one capstone instruction."""
    base = base_mnemonic(insn.mnemonic)
    registers = len(insn.operands)
    if base in BRANCHES:
        return "branch", 1
    if base in ("pop", "ldm", "ldmia", "ldmdb", "push", "stm", "stmia", "stmdb"):
        count = registers if base in ("pop", "push") else registers - 1
        return ("load" if base in ("pop", "ldm", "ldmia", "ldmdb") else "store"), 1 + count
    if base in ("ldrd", "strd"):
        return ("load" if base == "ldrd" else "store"), 3
    if base.startswith("ldr"):
        return "load", 2
    if base.startswith("str"):
        return "store", 2
    if base in ("sdiv", "udiv"):
        return "divide", 7
    if base in ("mul", "mla", "mls") or base.startswith(("smu", "sml", "umul", "umla", "smmul", "smmla")):
        return "multiply", 1
    return "alu", 1


def _load_segments(uc, elf: bytes) -> None:
    """Map memory and load every PT_LOAD segment at its load address and its run address (which
    is what the start-up code's .data copy would do)."""
    from unicorn import UC_PROT_ALL

    if elf[:4] != b"\x7fELF" or elf[4] != 1:
        raise ScalpelError("not a 32-bit ELF file")
    uc.mem_map(0x0000_0000, 4 << 20, UC_PROT_ALL)  # code memory (flash)
    uc.mem_map(0x2000_0000, 4 << 20, UC_PROT_ALL)  # data memory (SRAM)
    phoff, = struct.unpack_from("<I", elf, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x2A)
    for i in range(phnum):
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, _memsz, _flags, _align = struct.unpack_from(
            "<8I", elf, phoff + i * phentsize)
        if p_type == 1 and p_filesz:
            data = elf[p_offset:p_offset + p_filesz]
            for address in {p_paddr, p_vaddr}:
                uc.mem_write(address, data)


def symbols(elf_path: Path) -> dict[str, int]:
    """Symbol name -> address in the firmware (arm-none-eabi-nm)."""
    result = subprocess.run(["arm-none-eabi-nm", str(elf_path)], capture_output=True, text=True, check=True)
    return {parts[2]: int(parts[0], 16) for parts in map(str.split, result.stdout.splitlines()) if len(parts) == 3}


def count_cycles(elf_path: Path, function: str = "scalpel_infer", argument: str = "scalpel_inputs",
                 max_instructions: int = 200_000_000) -> CycleCount:
    """Cycles of one call `function(&argument)` in the firmware `elf_path` (see module doc)."""
    import capstone
    from unicorn import UC_ARCH_ARM, UC_HOOK_CODE, UC_MODE_MCLASS, UC_MODE_THUMB, Uc, UcError
    from unicorn import arm_const as arm

    elf_path = Path(elf_path)
    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    _load_segments(uc, elf_path.read_bytes())
    addresses = symbols(elf_path)
    missing = [name for name in (function, argument) if name not in addresses]
    if missing:
        raise ScalpelError(f"{elf_path} has no symbol {', '.join(missing)}")
    start = addresses[function] | 1  # Thumb
    uc.reg_write(arm.UC_ARM_REG_SP, 0x2000_0000 + (4 << 20) - 64)
    uc.reg_write(arm.UC_ARM_REG_LR, RETURN_ADDRESS | 1)
    uc.reg_write(arm.UC_ARM_REG_R0, addresses[argument])

    disassembler = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    disassembler.detail = True
    decoded: dict[int, tuple[str, str, int, bool, int]] = {}
    by_class, mnemonics = Counter(), Counter()
    state = {"cycles": 0, "count": 0, "previous": None}

    def on_instruction(uc, address, size, _user):
        previous = state["previous"]
        if previous is not None and previous[0] != address:  # the previous branch was taken
            state["cycles"] += REFILL
            by_class["branch"] += REFILL
        if address not in decoded:
            insn = next(disassembler.disasm(bytes(uc.mem_read(address, size)), address), None)
            if insn is None:
                raise ScalpelError(f"cannot decode the instruction at {address:#x}")
            kind, cycles = classify(insn)
            loads_pc = base_mnemonic(insn.mnemonic) in ("pop", "ldm", "ldr") and "pc" in insn.op_str
            decoded[address] = (kind, base_mnemonic(insn.mnemonic), cycles, kind == "branch" or loads_pc, size)
        kind, mnemonic, cycles, may_branch, size = decoded[address]
        state["cycles"] += cycles
        state["count"] += 1
        by_class[kind] += cycles
        mnemonics[mnemonic] += 1
        state["previous"] = (address + size,) if may_branch else None
        if state["count"] > max_instructions:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_CODE, on_instruction)
    try:
        uc.emu_start(start, RETURN_ADDRESS, count=max_instructions + 1)
    except UcError as err:
        raise ScalpelError(f"emulating {function} failed at {uc.reg_read(arm.UC_ARM_REG_PC):#x}: {err}") from None
    if uc.reg_read(arm.UC_ARM_REG_PC) & ~1 != RETURN_ADDRESS:
        raise ScalpelError(f"{function} did not return within {max_instructions} instructions")
    if state["previous"] is not None:  # the final return
        state["cycles"] += REFILL
        by_class["branch"] += REFILL
    return CycleCount(state["cycles"], state["count"], dict(by_class), mnemonics)
