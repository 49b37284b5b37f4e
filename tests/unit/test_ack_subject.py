"""Reading the stream sequence and the consumer off a delivered message's ack subject."""

from types import SimpleNamespace

from taskyard_common.nats_util import consumer_of, stream_seq


def test_both_ack_subject_layouts():
    old = SimpleNamespace(reply="$JS.ACK.T_JOBS.t_exec_default_high.1.42.7.1764660000000000000.3")
    new = SimpleNamespace(
        reply="$JS.ACK.hub.ACCOUNT.T_JOBS.t_exec_default_high.1.42.7.1764660000000000000.3.token"
    )
    for msg in (old, new):
        assert stream_seq(msg) == 42
        assert consumer_of(msg) == "t_exec_default_high"
