"""The raw JetStream puller lives in taskyard_common.puller: the API's REST-worker claims use it too."""

from taskyard_common.puller import ARMED_GRACE_S, Puller

__all__ = ["ARMED_GRACE_S", "Puller"]
