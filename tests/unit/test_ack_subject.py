"""Reading the stream sequence, the delivery count and the consumer off a delivered message's ack subject."""

from types import SimpleNamespace

from nats.aio.msg import Msg

from taskyard_common.nats_util import consumer_of, delivered_count, stream_seq


def test_both_ack_subject_layouts():
    old = SimpleNamespace(reply="$JS.ACK.T_JOBS.t_exec_default_high.2.42.7.1764660000000000000.3")
    new = SimpleNamespace(
        reply="$JS.ACK.hub.ACCOUNT.T_JOBS.t_exec_default_high.2.42.7.1764660000000000000.3.token"
    )
    for msg in (old, new):
        assert stream_seq(msg) == 42
        assert consumer_of(msg) == "t_exec_default_high"
        assert delivered_count(msg) == 2
        # The same as nats-py's own parse of it.
        assert delivered_count(msg) == Msg(None, reply=msg.reply).metadata.num_delivered  # type: ignore[arg-type]
