import msgpack
import pytest

from aray import _protocol as P


def sample(cls):
    args = []
    for ann in cls.__annotations__.values():
        if "bytes" in str(ann):
            args.append(b"\x00\x01")
        elif "int" in str(ann):
            args.append(7)
        elif "dict" in str(ann):
            args.append({"CPU": 1.0})
        elif "list" in str(ann):
            args.append([1, "a"])
        else:
            args.append("x")
    return cls(*args)


@pytest.mark.parametrize("cls", sorted(P.message_types().values(), key=lambda c: c.TAG),
                         ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = sample(cls)
    assert P.decode(P.encode([msg])) == [msg]
    assert type(P.decode(P.encode([msg]))[0]) is cls


def test_a_frame_carries_many_messages_in_order():
    msgs = [P.ReturnLease(f"w{i}") for i in range(100)] + [P.CancelTask(b"t", True)]
    assert P.decode(P.encode(msgs)) == msgs


def test_replies_are_marked():
    assert P.LeaseGranted.REPLY and P.ObjectReply.REPLY and P.ClusterState.REPLY
    assert not P.PushTask.REPLY and not P.RequestLease.REPLY


@pytest.mark.parametrize("frame", [
    b"garbage", msgpack.packb([[9999, 1]]), msgpack.packb([[P.ReturnLease.TAG]]),
    msgpack.packb({"not": "a list"}), b"",
])
def test_malformed_frames_raise_value_error(frame):
    with pytest.raises(ValueError, match="malformed"):
        P.decode(frame)
