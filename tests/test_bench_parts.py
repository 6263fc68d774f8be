"""The parts of ``cxr bench``: the interleaved timing its ratios rest on."""

from cxrlib.experiment.bench.harness import interleaved_runs


def test_interleaved_runs_rotate_the_order_and_drop_the_warm_up():
    calls = []

    def fn(name):
        def call():
            calls.append(name)
            return len(calls)

        return call

    syncs = []
    runs = interleaved_runs(
        {"a": fn("a"), "b": fn("b"), "c": fn("c")}, 2, warmup=1, sync=lambda: syncs.append(1)
    )
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert len(syncs) == 2 * len(calls)  # before and inside each timing
    assert list(runs) == ["a", "b", "c"]
    assert [result for _, result in runs["a"]] == [6, 8]  # warm-up round left out
    assert [result for _, result in runs["b"]] == [4, 9]
    assert all(seconds >= 0 for r in runs.values() for seconds, _ in r)


def test_two_candidates_alternate():
    calls = []
    runs = interleaved_runs({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, 3)
    assert calls == ["x", "y", "y", "x", "x", "y"]
    assert [len(r) for r in runs.values()] == [3, 3]
