"""A slot is busy until its job's handler returns; finishing deliveries are bounded (slots.py)."""

from taskyard_executor.slots import Slots


def test_a_delivery_holds_a_slot_until_its_handler_returns():
    slots = Slots(2)
    slots.take("a")
    slots.take("b")
    assert (slots.free(), slots.busy, slots.finishing) == (0, 2, 0)
    assert slots.release("a")
    assert (slots.free(), slots.busy, slots.finishing) == (1, 1, 1)
    slots.end("a")
    assert (slots.free(), slots.busy, slots.finishing) == (1, 1, 0)


def test_a_delivery_that_ends_without_a_handler_frees_its_slot_at_its_end():
    slots = Slots(1)
    slots.take("malformed")
    slots.end("malformed")
    assert (slots.free(), slots.busy, slots.finishing) == (1, 0, 0)


def test_release_is_once_and_only_for_a_slot_holder():
    slots = Slots(1)
    slots.take("a")
    assert slots.release("a") and not slots.release("a")
    assert not slots.release("never-delivered")
    assert (slots.busy, slots.finishing) == (0, 1)


def test_up_to_size_finishing_deliveries_cost_no_slot():
    slots = Slots(3)
    for key in range(3):
        slots.take(key)
        slots.release(key)
    assert (slots.free(), slots.finishing) == (3, 3)


def test_finishing_beyond_size_takes_slots_so_unacked_deliveries_stay_under_twice_size():
    slots = Slots(2)
    unacked = 0
    # Reports never complete (NATS away): every job's handler returns, none is acked.
    for key in range(100):
        if slots.free() == 0:
            break
        slots.take(key)
        slots.release(key)
        unacked += 1
    assert unacked == 4 and slots.free() == 0
    slots.take("late")  # a delivery already on its way (an armed pull)
    assert slots.free() == 0
    slots.end(0)
    assert slots.free() == 0  # 3 finishing (one beyond size) + 1 running
    slots.end(1)
    assert slots.free() == 1  # back within the bound: only the running job holds a slot
