"""``coreproof check-proof NET PROP PROOF.json``: re-check a stored proof on its
own, as a certificate (registered lazily by :mod:`verify.cli`).

PROOF.json is a proof record (``coreproof verify --save-proof``) or a proof
store entry holding one.  Exit code: 0 the proof re-checks (the property
holds), 3 it does not (the verdict is not established), 2 bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import exit_codes
from ..errors import InputError


def read_proof_file(path: str, prop):
    """The :class:`~.proof.ProofRecord` in ``path`` (InputError when unreadable)."""
    from ..proof_store import decode_payload
    from .proof import ProofRecord
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        d = decode_payload(data)
    except ValueError as exc:
        raise InputError(f"not a JSON file: {exc}", path=path,
                         expected="a coreproof proof record") from None
    if isinstance(d, dict) and isinstance(d.get("proof"), dict):  # a proof store entry
        d = d["proof"]
    try:
        if not isinstance(d, dict):
            raise TypeError("not a JSON object")
        return ProofRecord.from_dict(d, prop, path=path)  # InputError on a bad status
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:
        raise InputError(f"not a proof record ({type(exc).__name__}: {exc})", path=path,
                         expected="a coreproof proof record (coreproof verify --save-proof)"
                         ) from None


@click.command("check-proof")
@click.argument("net")
@click.argument("prop")
@click.argument("proof_file", metavar="PROOF.json")
@click.option("--timeout", default="60", show_default=True, help="Seconds for the re-check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check_proof_cmd(net, prop, proof_file, timeout, as_json):
    """Re-check a stored proof of PROP on NET, as a certificate.

    The proof's branches must tile every region and each must close again with
    NET's own bounds (or an exact Z3 query of the branch); nothing is searched.
    Exit code: 0 the proof checks (PROP holds), 3 it does not, 2 bad input."""
    from ..api import load_network, load_property
    from ..options import VerifyOptions, check_timeout
    from .check import check_proof
    options = VerifyOptions(timeout=check_timeout(timeout, "--timeout"))
    network = load_network(net)
    prop_ = load_property(prop, network)
    record = read_proof_file(proof_file, prop_)
    outcome = check_proof(network, prop_, record, options)
    if as_json:
        click.echo(json.dumps({"network": network.name, "property": prop_.name,
                               **outcome.to_dict()}))
    elif outcome.ok:
        click.echo(f"CERTIFIED  {network.name} / {prop_.name}: {outcome.branches} branches "
                   f"re-checked ({outcome.by_z3} by Z3) in {outcome.time_s:.2f} s")
    else:
        click.echo(f"NOT CERTIFIED  {network.name} / {prop_.name}: {outcome.reason}")
    sys.exit(exit_codes.HOLDS if outcome.ok else exit_codes.UNKNOWN)
