"""etcd's gRPC method paths bound to their message types.

We call methods by path instead of generating *_pb2_grpc.py: it keeps the stubs free of grpcio-version
checks and makes every RPC the client can issue visible in one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from etcdlock._wire import rpc_pb2 as pb

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    path: str
    request: type[Req]
    response: type[Resp]
    # Safe to send again after a try whose outcome is unknown (it timed out): a read, or a write whose
    # repetition changes nothing. Such calls give each endpoint a share of the timeout, so one silent
    # member cannot use it all up.
    idempotent: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def serializer(self) -> Any:
        return self.request.SerializeToString  # type: ignore[attr-defined]

    def deserializer(self) -> Any:
        return self.response.FromString  # type: ignore[attr-defined]


RANGE = Method("/etcdserverpb.KV/Range", pb.RangeRequest, pb.RangeResponse, idempotent=True)
PUT = Method("/etcdserverpb.KV/Put", pb.PutRequest, pb.PutResponse)
DELETE_RANGE = Method("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse)
TXN = Method("/etcdserverpb.KV/Txn", pb.TxnRequest, pb.TxnResponse)
COMPACT = Method("/etcdserverpb.KV/Compact", pb.CompactionRequest, pb.CompactionResponse)

WATCH = Method("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse)

LEASE_GRANT = Method("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse)
# Revoking twice is harmless (the second finds nothing): safe to try on another member after a timeout.
LEASE_REVOKE = Method(
    "/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse, idempotent=True
)
LEASE_KEEPALIVE = Method(
    "/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
)
LEASE_TTL = Method(
    "/etcdserverpb.Lease/LeaseTimeToLive",
    pb.LeaseTimeToLiveRequest,
    pb.LeaseTimeToLiveResponse,
    idempotent=True,
)
LEASE_LEASES = Method(
    "/etcdserverpb.Lease/LeaseLeases", pb.LeaseLeasesRequest, pb.LeaseLeasesResponse, idempotent=True
)

MEMBER_LIST = Method(
    "/etcdserverpb.Cluster/MemberList", pb.MemberListRequest, pb.MemberListResponse, idempotent=True
)
STATUS = Method("/etcdserverpb.Maintenance/Status", pb.StatusRequest, pb.StatusResponse, idempotent=True)
AUTHENTICATE = Method("/etcdserverpb.Auth/Authenticate", pb.AuthenticateRequest, pb.AuthenticateResponse)
