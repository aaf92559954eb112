"""A deterministic cycle ESTIMATE for firmware on a Cortex-M4 — not a measurement.

QEMU is not cycle-accurate, and no board is attached here. So the firmware's `scalpel_infer`
(one input through the network) is executed in unicorn (an emulator built on QEMU's CPU models,
with a hook on every basic block), each executed instruction is decoded with capstone, and its
cost is looked up in the Cortex-M4 timing table of Arm's
Technical Reference Manual (section 3.3, "Cortex-M4 instruction set summary"), simplified:

* data processing, multiplies (MUL, MLA, SMUAD, SMLAD, SMULBB, ...), saturating arithmetic
  (QADD, SSAT): 1 cycle;
* single loads and stores (LDR*, STR*): 2, or 1 right after a single load whose result the
  address does not need (the TRM's pipelining of neighbouring loads; a load that needs the
  previous load's result, like x[index[j]], stays 2);
* LDRD/STRD: 3; LDM/STM/PUSH/POP: 1 + registers (+ the branch refill when POP loads the PC);
* branches: 1 when not taken, 1 + 2 (a pipeline refill of 1 to 3, taken as 2) when taken;
* SDIV/UDIV: 7 (the TRM gives 2 to 12);
* unaligned loads (a memory hook sees every read's address): +1 for a halfword-aligned word
  (the TRM: done as two halfwords), +2 for a byte-aligned word, +1 for a byte-aligned halfword —
  what an unaligned pair of int16 inputs costs the pairs kernel.

A block is priced whole (an instruction an IT block skips is priced as if it ran; the M4 spends a
cycle on it anyway). The emulator also ends blocks where no branch is (at a page boundary, for
one), so a block that falls through into the next is priced as one: a load pipelined with the
load before it stays pipelined across the split, wherever the linker placed the code. The same
table prices every form, so ratios between forms (dense / pairs / CSR) are what it is made for.
Flash wait states, the bus matrix and caches (an M4 has none) are not modelled.
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
    stack_bytes: int = 0  # the call's deepest stack, sampled at every basic block

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


SINGLE_LOADS = ("ldr", "ldrh", "ldrsh", "ldrb", "ldrsb")
SINGLE_STORES = ("str", "strh", "strb")


def pipelined(previous, insn) -> bool:
    """The TRM's load pipelining: a single load or store right after a single load overlaps with
    it (1 cycle instead of 2) unless its address needs the register that load is still fetching."""
    if previous is None or base_mnemonic(previous.mnemonic) not in SINGLE_LOADS:
        return False
    if base_mnemonic(insn.mnemonic) not in SINGLE_LOADS + SINGLE_STORES:
        return False
    from capstone import arm as cs_arm

    fetching = previous.operands[0].reg
    if fetching == cs_arm.ARM_REG_PC:
        return False
    return not any(op.type == cs_arm.ARM_OP_MEM and fetching in (op.mem.base, op.mem.index) for op in insn.operands)


@dataclass
class _Block:
    """A basic block's price: cycles when run through, by class and by mnemonic."""

    cycles: int
    instructions: int
    by_class: Counter
    mnemonics: Counter
    may_branch: bool  # its last instruction can jump (a branch, or a load into the PC)
    first: object  # its first and last instructions (capstone), for pipelining across a split
    last: object

    @classmethod
    def decode(cls, disassembler, code: bytes, address: int) -> "_Block":
        by_class, mnemonics, may_branch, count, previous, decoded = Counter(), Counter(), False, 0, None, 0
        first = None
        for insn in disassembler.disasm(code, address):
            first = first or insn
            decoded += insn.size
            kind, cycles = classify(insn)
            if pipelined(previous, insn):
                cycles = 1
            previous = insn
            base = base_mnemonic(insn.mnemonic)
            by_class[kind] += cycles
            mnemonics[base] += 1
            count += 1
            may_branch = kind == "branch" or (base in ("pop", "ldm", "ldr") and "pc" in insn.op_str)
        if count == 0 or decoded != len(code):
            raise ScalpelError(f"cannot decode the instructions at {address:#x}")
        return cls(sum(by_class.values()), count, by_class, mnemonics, may_branch, first, previous)


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


def count_cycles(elf_path: Path, function: str = "scalpel_infer", argument: str | int = "scalpel_inputs",
                 max_instructions: int = 200_000_000) -> CycleCount:
    """Cycles of one call `function(&argument)` (a symbol) or `function(argument)` (an int) in
    the firmware `elf_path` (see module doc)."""
    import capstone
    from unicorn import UC_ARCH_ARM, UC_HOOK_BLOCK, UC_HOOK_MEM_READ, UC_MODE_MCLASS, UC_MODE_THUMB, Uc, UcError
    from unicorn import arm_const as arm

    elf_path = Path(elf_path)
    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    _load_segments(uc, elf_path.read_bytes())
    addresses = symbols(elf_path)
    missing = [name for name in (function, argument) if isinstance(name, str) and name not in addresses]
    if missing:
        raise ScalpelError(f"{elf_path} has no symbol {', '.join(missing)}")
    start = addresses[function] | 1  # Thumb
    stack_top = 0x2000_0000 + (4 << 20) - 64
    uc.reg_write(arm.UC_ARM_REG_SP, stack_top)
    uc.reg_write(arm.UC_ARM_REG_LR, RETURN_ADDRESS | 1)
    uc.reg_write(arm.UC_ARM_REG_R0, addresses[argument] if isinstance(argument, str) else argument)

    disassembler = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    disassembler.detail = True
    blocks: dict[int, _Block] = {}  # address -> the block's price, decoded once
    runs: Counter = Counter()  # address -> times executed
    state = {"cycles": 0, "count": 0, "refills": 0, "previous": None, "sp": stack_top, "unaligned": 0,
             "fell_through": None}
    joins: Counter = Counter()  # (block, next block) -> times run one after the other

    def on_block(uc, address, size, _user):
        """Price a whole basic block at once (a per-instruction hook is ~10x slower); a block
        ends at a branch, so a taken branch is a block that starts elsewhere than where the
        previous one, ending in a branch, fell through to."""
        previous = state["previous"]
        if previous is not None and previous != address:
            state["refills"] += 1
        block = blocks.get(address)
        if block is None:
            block = blocks[address] = _Block.decode(disassembler, bytes(uc.mem_read(address, size)), address)
        runs[address] += 1
        before = state["fell_through"]
        if before is not None and before[0] == address:
            joins[(before[1], address)] += 1
        state["fell_through"] = None if block.may_branch else (address + size, address)
        state["sp"] = min(state["sp"], uc.reg_read(arm.UC_ARM_REG_SP))
        state["cycles"] += block.cycles
        state["count"] += block.instructions
        state["previous"] = address + size if block.may_branch else None
        if state["count"] > max_instructions:
            uc.emu_stop()

    def on_read(uc, _access, address, size, _value, _user):
        if address & (size - 1):  # unaligned: the TRM's extra cycles
            state["unaligned"] += 2 if size == 4 and address & 1 else 1

    uc.hook_add(UC_HOOK_BLOCK, on_block)
    uc.hook_add(UC_HOOK_MEM_READ, on_read)
    try:
        uc.emu_start(start, RETURN_ADDRESS)
    except UcError as err:
        raise ScalpelError(f"emulating {function} failed at {uc.reg_read(arm.UC_ARM_REG_PC):#x}: {err}") from None
    if uc.reg_read(arm.UC_ARM_REG_PC) & ~1 != RETURN_ADDRESS:
        raise ScalpelError(f"{function} did not return within {max_instructions} instructions")
    if state["previous"] is not None:  # the final return
        state["refills"] += 1
    by_class, mnemonics = Counter({"branch": REFILL * state["refills"], "unaligned": state["unaligned"]}), Counter()
    for address, times in runs.items():
        for kind, cycles in blocks[address].by_class.items():
            by_class[kind] += cycles * times
        for mnemonic, count in blocks[address].mnemonics.items():
            mnemonics[mnemonic] += count * times
    for (before, after), times in joins.items():  # a block split where no branch is (see module doc)
        if pipelined(blocks[before].last, blocks[after].first):
            kind, _ = classify(blocks[after].first)
            by_class[kind] -= times
            state["cycles"] -= times
    state["cycles"] += REFILL * state["refills"] + state["unaligned"]
    return CycleCount(state["cycles"], state["count"], dict(by_class), mnemonics, stack_top - state["sp"])
