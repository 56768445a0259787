"""Maglev consistent hashing: the lookup table every data path of `wsd balancer` forwards by.

The table is a pure function of the backend *set* and the table size (Eisenbud et al., NSDI 2016,
section 3.4): every front host that sees the same healthy backends computes the same table, so
several fronts agree without talking. `populate_reference` is the paper's algorithm in plain Python,
kept for the tests; `populate` runs the same loop in Cython (`wsd.ext.maglev`) when it is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# A prime table size makes every `skip` in 1..M-1 coprime with M, so each backend's preference list
# is a full permutation of the slots. The paper uses 65537; 4099 keeps an nft map small and still
# balances to within one slot for up to ~40 backends (keep M >= 100 x backends).
DEFAULT_TABLE_SIZE = 4099

EMPTY_SLOT = -1


def is_prime(number: int) -> bool:
    """True when `number` is prime (trial division; table sizes are small)."""
    if number < 2:
        return False
    divisor = 2
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 1
    return True


def permutation_parameters(backend_name: str, table_size: int) -> tuple[int, int]:
    """The (offset, skip) pair that defines `backend_name`'s preference list over the slots.

    A keyed BLAKE2b digest, not Python's `hash()`: the value must be the same in every process and on
    every host, or the fronts would compute different tables.
    """
    digest = hashlib.blake2b(backend_name.encode(), digest_size=16, person=b"wsd-maglev").digest()
    first_hash = int.from_bytes(digest[:8], "little")
    second_hash = int.from_bytes(digest[8:], "little")
    offset = first_hash % table_size
    skip = second_hash % (table_size - 1) + 1
    return offset, skip


def populate_reference(offsets: Sequence[int], skips: Sequence[int], table_size: int) -> list[int]:
    """Fill the table the way the paper's Pseudocode 1 does: backends take turns claiming their next
    preferred free slot until every slot is owned. Returns, per slot, the index of its backend."""
    backend_count = len(offsets)
    table = [EMPTY_SLOT] * table_size
    if backend_count == 0:
        return table
    next_choice = [0] * backend_count
    filled = 0
    while True:
        for backend in range(backend_count):
            slot = (offsets[backend] + next_choice[backend] * skips[backend]) % table_size
            while table[slot] >= 0:
                next_choice[backend] += 1
                slot = (offsets[backend] + next_choice[backend] * skips[backend]) % table_size
            table[slot] = backend
            next_choice[backend] += 1
            filled += 1
            if filled == table_size:
                return table


def populate(offsets: Sequence[int], skips: Sequence[int], table_size: int) -> list[int]:
    """`populate_reference`, in Cython when `wsd.ext.maglev` is built (about 50x faster)."""
    try:
        from wsd.ext.maglev import populate as populate_fast
    except ImportError:  # not built (e.g. a source checkout without `pip install -e .`)
        return populate_reference(offsets, skips, table_size)
    return list(populate_fast(list(offsets), list(skips), table_size))


def build_table(backend_names: Sequence[str], table_size: int = DEFAULT_TABLE_SIZE) -> list[str | None]:
    """The Maglev table over `backend_names`: one backend name per slot (None when there are none).

    Names are sorted first so the table depends on the set, not on the order backends were listed
    or came back from a health check.
    """
    if not is_prime(table_size):
        raise ValueError(f"Maglev table size {table_size} is not prime; use a prime such as 4099 or 65537")
    names = sorted(set(backend_names))
    if not names:
        return [None] * table_size
    parameters = [permutation_parameters(name, table_size) for name in names]
    owners = populate([offset for offset, _ in parameters], [skip for _, skip in parameters], table_size)
    return [names[owner] for owner in owners]
