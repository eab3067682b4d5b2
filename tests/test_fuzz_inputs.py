"""Property-based fuzzing of every reader of user files (issue 13): random bytes
and mutated valid files give a clean parse or an ``InputError`` -- never another
exception.  2000 examples per reader by default (derandomized: the same
examples every run, so nothing can flake), 20000 under ``-m slow``."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.errors import InputError

DEFAULT_EXAMPLES = 2000
SLOW_EXAMPLES = 20000

#: fragments that tend to break parsers of these formats
TOKENS = [b"nan", b"inf", b"-inf", b"1e400", b"-1e-400", b"(", b")", b"((", b"X_9", b"Y_99",
          b"X_", b",", b",,", b"\n", b"\r\n", b"//", b"\xff\xfe", b"\x00", b"0", b"-", b"+",
          b"(assert", b"(or", b"(and", b"(<=", b"(>=", b"declare-const", b"Real", b" ",
          b"{", b"}", b"[", b"]", b'"', b":", b"null", b"true", b"-1", b"999999999999",
          b"1e308", b"\\u0000", b"\xc3\x28", b"\x80"]


def mutate(rnd, seed: bytes) -> bytes:
    """``seed`` with a few random edits: byte changes, cuts, insertions of random
    bytes or of ``TOKENS``, truncation, a duplicated chunk."""
    data = bytearray(seed)
    for _ in range(rnd.randint(1, 6)):
        op, pos = rnd.randint(0, 5), rnd.randint(0, len(data))
        if op == 0 and pos < len(data):
            data[pos] = rnd.randint(0, 255)
        elif op == 1:
            del data[pos:pos + rnd.randint(1, 24)]
        elif op == 2:
            data[pos:pos] = rnd.choice(TOKENS)
        elif op == 3:
            data[pos:pos] = bytes(rnd.randint(0, 255) for _ in range(rnd.randint(1, 8)))
        elif op == 4:
            del data[pos:]
        else:
            data[pos:pos] = data[pos:min(len(data), pos + rnd.randint(1, 64))]
    return bytes(data)


def make_input(seeds: list[bytes], key: int) -> bytes:
    """Example ``key``: random bytes (one in three) or a mutated seed, from a
    Random seeded by ``key`` (one cheap draw per example: hypothesis' own cost
    per draw, about a millisecond, would otherwise dominate these readers)."""
    rnd = random.Random(key)
    if key % 3 == 0:
        return bytes(rnd.randint(0, 255) for _ in range(rnd.randint(0, 200)))
    return mutate(rnd, seeds[key % len(seeds)])


def inputs(seeds: list[bytes]):
    return st.integers(min_value=0, max_value=2 ** 63).map(lambda key: make_input(seeds, key))


def fuzz(check, seeds: list[bytes], n: int) -> None:
    """Run ``check(data)`` on ``n`` examples; it may return or raise InputError."""
    for s in seeds:  # the seeds themselves parse
        check(s)

    seen = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs(seeds))
    def run(data):
        seen.append(len(data))
        try:
            check(data)
        except InputError:
            pass

    run()
    assert len(seen) >= n  # the examples really ran


SIZES = [pytest.param("default", id="2000"),
         pytest.param("slow", id="20000", marks=pytest.mark.slow)]


@pytest.fixture
def fast_dir(tmp_path):
    """A directory in memory when the machine has one (each example writes a file:
    on a disk-backed /tmp the open alone costs milliseconds)."""
    import shutil
    import tempfile
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="coreproof-fuzz-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- seeds -----------------------------------------------------------------------------
def _small_net(n_in=3, hidden=4, n_out=2, seed=0):
    from verify.network import Affine, Network
    rng = np.random.default_rng(seed)
    return Network((Affine(rng.normal(size=(hidden, n_in)), rng.normal(size=hidden)),
                    Affine(rng.normal(size=(n_out, hidden)), rng.normal(size=n_out))),
                   (n_in,), "small")


VNNLIB_SEEDS = [b"""; a property
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 -0.5))
(assert (<= X_0 0.5))
(assert (and (>= X_1 0) (<= X_1 1e-1)))
(assert (<= X_2 (/ 1 2)))
(assert (>= X_2 (- 0.25)))
(assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 (+ Y_1 (* 2 0.5))))))
""", b"""(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= X_2 0) (<= X_2 1))
            (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= X_2 0) (<= X_2 1))))
(assert (<= Y_0 -3.5e2))
"""]


def _onnx_seeds(tmp: Path) -> list[bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from verify.onnx_io import save_onnx
    save_onnx(_small_net(), tmp / "chain.onnx")
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(2, 1, 2, 2)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "B")
    g = numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "G")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 3, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 3])], initializer=[w, b, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return [(tmp / "chain.onnx").read_bytes(), model.SerializeToString()]


def _nnet_seed(tmp: Path) -> bytes:
    from verify.nnet_io import save_nnet
    save_nnet(_small_net(), tmp / "s.nnet")
    return (tmp / "s.nnet").read_bytes()


def _record_seeds() -> list[bytes]:
    from compress import compress
    net = _small_net(hidden=6)
    return [compress(net, recipe).record.to_json().encode()
            for recipe in ("neurons:0.5,int8", "magnitude:0.3")]


# ---- the readers ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_fuzz_vnnlib_reader(fast_dir, size):
    from verify.vnnlib import load_vnnlib
    path = fast_dir / "p.vnnlib"

    def check(data: bytes):
        path.write_bytes(data)
        load_vnnlib(path)
    fuzz(check, VNNLIB_SEEDS, SLOW_EXAMPLES if size == "slow" else DEFAULT_EXAMPLES)


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_onnx_loader(fast_dir, size):
    from verify.loading import load_network
    seeds = _onnx_seeds(fast_dir)
    path = fast_dir / "n.onnx"

    def check(data: bytes):
        path.write_bytes(data)
        load_network(path)
    fuzz(check, seeds, SLOW_EXAMPLES if size == "slow" else DEFAULT_EXAMPLES)


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_nnet_loader(fast_dir, size):
    from verify.loading import load_network
    path = fast_dir / "n.nnet"

    def check(data: bytes):
        path.write_bytes(data)
        load_network(path)
    fuzz(check, [_nnet_seed(fast_dir)], SLOW_EXAMPLES if size == "slow" else DEFAULT_EXAMPLES)


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_change_record_reader(fast_dir, size):
    from compress.record import ChangeRecord
    path = fast_dir / "v.changes.json"

    def check(data: bytes):
        path.write_bytes(data)
        ChangeRecord.load(path)
    fuzz(check, _record_seeds(), SLOW_EXAMPLES if size == "slow" else DEFAULT_EXAMPLES)


@pytest.fixture(scope="module")
def stored_proof(tmp_path_factory):
    """A proof store entry (with its proof record) of a small network and property."""
    from verify.api import load_property, verify_property
    from verify.proof_store import ProofStore, make_payload
    from verify.reuse.check import record_of
    from verify.verifier import Proof
    tmp = tmp_path_factory.mktemp("store")
    net = _small_net()
    (tmp / "p.vnnlib").write_bytes(VNNLIB_SEEDS[0])
    prop = load_property(tmp / "p.vnnlib", net)
    proof = Proof()
    res = verify_property(net, prop, proof=proof)
    record = record_of(net, prop, res, proof)
    store = ProofStore(tmp)
    payload = make_payload(net.digest(), prop.digest(), res,
                           record.to_dict(prop) if record is not None else None)
    store.put(net.digest(), prop.digest(), "k", payload)
    entry = store.path_for(net.digest(), prop.digest(), "k")
    return net, prop, store, entry


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_proof_store_reader(stored_proof, fast_dir, size):
    from verify.proof_store import ProofStore
    from verify.reuse.check_cli import read_proof_file
    net, prop, _, stored = stored_proof
    seed = stored.read_bytes()
    store = ProofStore(fast_dir)
    entry = store.path_for(net.digest(), prop.digest(), "k")
    entry.parent.mkdir(parents=True)
    proof_path = fast_dir / "proof.json"

    def check(data: bytes):
        entry.write_bytes(data)
        payload = store.get(net.digest(), prop.digest(), "k")  # never raises: a miss
        assert payload is None or isinstance(payload, dict)
        proof_path.write_bytes(data)
        read_proof_file(str(proof_path), prop)  # a record, or InputError
    fuzz(check, [seed], SLOW_EXAMPLES if size == "slow" else DEFAULT_EXAMPLES)
