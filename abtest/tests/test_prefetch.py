import threading

import pytest

from abtest.prefetch import prefetched


def test_yields_every_item_in_order():
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))


def test_empty_iterable():
    assert list(prefetched([])) == []


def test_items_are_produced_in_another_thread():
    threads = []

    def produce():
        for i in range(3):
            threads.append(threading.current_thread())
            yield i

    assert list(prefetched(produce())) == [0, 1, 2]
    assert all(t is not threading.current_thread() for t in threads)


def test_producer_error_is_raised_in_the_consumer_after_earlier_items():
    def produce():
        yield 1
        yield 2
        raise ValueError("line 3 is broken")

    seen = []
    with pytest.raises(ValueError, match="line 3 is broken"):
        for item in prefetched(produce()):
            seen.append(item)
    assert seen == [1, 2]


def test_consumer_stopping_early_stops_and_joins_the_producer():
    produced = []
    finished = threading.Event()

    def produce():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            finished.set()

    items = prefetched(produce(), depth=1)
    with pytest.raises(RuntimeError):
        for item in items:
            if item == 2:
                raise RuntimeError("the database said no")
    items.close()
    assert finished.wait(5)
    # At most the item in hand, the queued one and the one being put were produced.
    assert len(produced) <= 6


def test_depth_must_be_positive():
    with pytest.raises(ValueError):
        list(prefetched([1], depth=0))


def test_short_gil_slices_are_set_for_the_block_and_restored():
    import sys

    from abtest.prefetch import short_gil_slices

    before = sys.getswitchinterval()
    with short_gil_slices(0.001):
        assert sys.getswitchinterval() == pytest.approx(0.001)
        with short_gil_slices(0.002):  # nested: the shorter setting stays
            assert sys.getswitchinterval() == pytest.approx(0.001)
        assert sys.getswitchinterval() == pytest.approx(0.001)
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), short_gil_slices(0.001):
        raise RuntimeError("boom")
    assert sys.getswitchinterval() == before


def test_overlapping_blocks_in_two_threads_restore_the_setting_once_both_end():
    import sys

    from abtest.prefetch import short_gil_slices

    before = sys.getswitchinterval()
    inside, release = threading.Event(), threading.Event()

    def other():
        with short_gil_slices(0.001):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    with short_gil_slices(0.001):
        thread.start()
        assert inside.wait(5)
    assert sys.getswitchinterval() == pytest.approx(0.001)  # the other block still runs
    release.set()
    thread.join(5)
    assert sys.getswitchinterval() == before


def test_the_cyclic_collector_is_paused_for_the_block_and_restored():
    import gc

    from abtest.prefetch import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer block still runs"
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_disabled_before_the_block_stays_disabled():
    import gc

    from abtest.prefetch import cyclic_gc_paused

    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_comes_back_once_both_threads_blocks_end():
    import gc

    from abtest.prefetch import cyclic_gc_paused

    inside, release = threading.Event(), threading.Event()

    def other():
        with cyclic_gc_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    with cyclic_gc_paused():
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other block still runs
    release.set()
    thread.join(5)
    assert gc.isenabled()
