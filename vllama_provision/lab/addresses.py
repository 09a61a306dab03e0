"""Loopback address blocks: each lab owns 15 addresses inside 127.0.1.0/24.

Block ``b`` holds 127.0.1.(16b+1) .. 127.0.1.(16b+15). The ``default`` lab is always block 0
(its first host is 127.0.1.1, which ``inventory/local.yml`` relies on); other labs take the lowest
free block from 1 to 15.
"""

from __future__ import annotations

import ipaddress

from vllama_provision.errors import LabError

NETWORK = ipaddress.IPv4Network("127.0.1.0/24")
BLOCK_SIZE = 16
BLOCKS = 16
HOSTS_PER_LAB = BLOCK_SIZE - 1
DEFAULT_LAB = "default"


def address(block: int, index: int) -> str:
    """The address of host ``index`` (1-based) in ``block``."""
    if not 0 <= block < BLOCKS:
        raise LabError(f"address block {block} is outside 0..{BLOCKS - 1}")
    if not 1 <= index <= HOSTS_PER_LAB:
        raise LabError(f"a lab has at most {HOSTS_PER_LAB} hosts (index {index})")
    addr = NETWORK.network_address + BLOCK_SIZE * block + index
    if not addr.is_loopback:  # pragma: no cover - guarded by the constants above
        raise LabError(f"{addr} is not a loopback address")
    return str(addr)


def choose_block(lab: str, used: set[int]) -> int:
    """The block for a new lab named ``lab`` given the blocks other labs hold."""
    if lab == DEFAULT_LAB:
        return 0
    for block in range(1, BLOCKS):
        if block not in used:
            return block
    raise LabError(f"no free address block for lab {lab!r}: {BLOCKS - 1} labs are already up "
                   "(run `vllama-provision lab status` and `lab down --lab NAME`)")
