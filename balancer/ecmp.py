"""`ecmp` data path: a route to the VIP through a resilient nexthop group, programmed over netlink.

The kernel hashes each packet's 4-tuple (fib_multipath_hash_policy=3, fields 0x0037) onto the
group's buckets; the backends hold the VIP themselves and answer the client directly (DSR), so the
front keeps no per-connection state at all. A *resilient* group keeps every bucket on its nexthop
when another nexthop leaves, which is what keeps the survivors' connections alive.

pyroute2 has no message class for nexthop objects (RTM_*NEXTHOP*) nor for a route's RTA_NH_ID, so
they are declared here on top of its netlink machinery, attribute for attribute from
include/uapi/linux/nexthop.h and rtnetlink.h.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from wsd.balancer.config import BalancerConfig, Endpoint

log = logging.getLogger("wsd.balancer.ecmp")

RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
RTM_NEWNEXTHOPBUCKET, RTM_GETNEXTHOPBUCKET = 116, 118
NEXTHOP_GRP_TYPE_RES = 1
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1
USER_HZ = 100  # netlink clock_t timers are in 1/100 s

REQUIRED_SYSCTLS = {
    # Policy 1 reuses the socket's random skb hash over veth: reopened 4-tuples move. Policy 3 with
    # these fields hashes exactly src/dst address, protocol and ports.
    "net/ipv4/fib_multipath_hash_policy": "3",
    "net/ipv4/fib_multipath_hash_fields": "0x0037",
    "net/ipv4/ip_forward": "1",
}


class nhmsg(nlmsg):  # noqa: N801 - pyroute2 names message classes after the C structs
    """struct nhmsg and the NHA_* attributes."""

    fields = (("family", "B"), ("scope", "B"), ("protocol", "B"), ("resvd", "B"), ("flags", "I"))
    nla_map = (
        ("NHA_UNSPEC", "none"),
        ("NHA_ID", "uint32"),
        ("NHA_GROUP", "cdata"),  # array of struct nexthop_grp {u32 id; u8 weight; u8 r1; u16 r2}
        ("NHA_GROUP_TYPE", "uint16"),
        ("NHA_BLACKHOLE", "flag"),
        ("NHA_OIF", "uint32"),
        ("NHA_GATEWAY", "ip4addr"),
        ("NHA_ENCAP_TYPE", "uint16"),
        ("NHA_ENCAP", "hex"),
        ("NHA_GROUPS", "flag"),
        ("NHA_MASTER", "uint32"),
        ("NHA_FDB", "flag"),
        ("NHA_RES_GROUP", "res_group"),
        ("NHA_RES_BUCKET", "res_bucket"),
    )

    class res_group(nla):  # noqa: N801
        nla_flags = 0x8000  # NLA_F_NESTED: the kernel validates nexthop messages strictly
        nla_map = (
            ("NHA_RES_GROUP_PAD", "none"),
            ("NHA_RES_GROUP_BUCKETS", "uint16"),
            ("NHA_RES_GROUP_IDLE_TIMER", "uint32"),
            ("NHA_RES_GROUP_UNBALANCED_TIMER", "uint32"),
            ("NHA_RES_GROUP_UNBALANCED_TIME", "uint64"),
        )

    class res_bucket(nla):  # noqa: N801
        nla_flags = 0x8000
        nla_map = (
            ("NHA_RES_BUCKET_PAD", "none"),
            ("NHA_RES_BUCKET_INDEX", "uint16"),
            ("NHA_RES_BUCKET_IDLE_TIME", "uint64"),
            ("NHA_RES_BUCKET_NH_ID", "uint32"),
        )


class rtmsg_with_nexthop(rtmsg):  # noqa: N801
    """rtmsg extended up to RTA_NH_ID (30), which pyroute2's map stops short of."""

    nla_map = (
        *rtmsg.nla_map[:24],
        ("RTA_UNUSED_24", "hex"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "uint16"),
        ("RTA_DPORT", "uint16"),
        ("RTA_NH_ID", "uint32"),
    )


def check_sysctls(proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """The sysctls ecmp mode needs that are not set, as "name is X, needs Y" lines."""
    problems = []
    for name, wanted in REQUIRED_SYSCTLS.items():
        try:
            value = (proc_sys / name).read_text().strip()
        except OSError:
            problems.append(f"{name.replace('/', '.')} is missing (kernel too old for this hash policy?)")
            continue
        if int(value, 0) != int(wanted, 0):
            problems.append(f"{name.replace('/', '.')} is {value}, needs {wanted}")
    return problems


class EcmpDataPlane:
    """Keeps `VIP/32 nhid <group>` and the group's membership equal to the wanted backend set."""

    mode = "ecmp"

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config
        self.group_id = config.nexthop_id_base
        self.nexthop_ids = {
            backend: config.nexthop_id_base + 1 + index for index, backend in enumerate(config.backends)
        }
        self.members: list[Endpoint] = []
        self.netlink: IPRoute | None = None
        self.lock = asyncio.Lock()
        # pyroute2's synchronous IPRoute runs its own event loop, so it cannot live on ours: every
        # netlink call goes through this one thread (which also keeps the socket single-threaded).
        self.netlink_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    async def _in_netlink_thread(self, function, *arguments):
        return await asyncio.get_running_loop().run_in_executor(self.netlink_thread, function, *arguments)

    # -- netlink plumbing -------------------------------------------------------------------------

    def _request(self, message, message_type: int, flags: int) -> list:
        assert self.netlink is not None
        return list(self.netlink.nlm_request(message, message_type, flags))

    def _open(self) -> None:
        self.netlink = IPRoute()
        # pyroute2 0.9's synchronous nlm_request reads this key; the default status dict lacks it.
        self.netlink.status["nlm_generator"] = False
        nexthop_messages = (RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP, RTM_NEWNEXTHOPBUCKET, RTM_GETNEXTHOPBUCKET)
        for message_type in nexthop_messages:
            self.netlink.marshal.msg_map[message_type] = nhmsg
        self.netlink.marshal.msg_map[RTM_NEWROUTE] = rtmsg_with_nexthop
        self.netlink.marshal.msg_map[RTM_DELROUTE] = rtmsg_with_nexthop

    def _output_interface(self, address: str) -> int:
        assert self.netlink is not None
        routes = self.netlink.route("get", dst=address)
        return routes[0].get_attr("RTA_OIF")

    def _set_backend_nexthop(self, backend: Endpoint) -> None:
        message = nhmsg()
        message["family"] = socket.AF_INET
        message["attrs"] = [
            ("NHA_ID", self.nexthop_ids[backend]),
            ("NHA_OIF", self._output_interface(backend.host)),
            ("NHA_GATEWAY", backend.host),
        ]
        self._request(message, RTM_NEWNEXTHOP, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)

    def _set_group(self, members: list[Endpoint], create: bool) -> None:
        message = nhmsg()
        message["family"] = socket.AF_UNSPEC
        entries = b"".join(struct.pack("=IBBH", self.nexthop_ids[backend], 0, 0, 0) for backend in members)
        attrs = [("NHA_ID", self.group_id), ("NHA_GROUP", entries), ("NHA_GROUP_TYPE", NEXTHOP_GRP_TYPE_RES)]
        if create:
            # Bucket count and timers are fixed here; a replace may not change the bucket count.
            attrs.append(
                (
                    "NHA_RES_GROUP",
                    {
                        "attrs": [
                            ("NHA_RES_GROUP_BUCKETS", self.config.ecmp_buckets),
                            ("NHA_RES_GROUP_IDLE_TIMER", self.config.ecmp_idle_timer_s * USER_HZ),
                        ]
                    },
                )
            )
        message["attrs"] = attrs
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | (NLM_F_CREATE if create else 0)
        self._request(message, RTM_NEWNEXTHOP, flags)

    def _delete_nexthop(self, nexthop_id: int) -> None:
        message = nhmsg()
        message["family"] = socket.AF_UNSPEC
        message["attrs"] = [("NHA_ID", nexthop_id)]
        try:
            self._request(message, RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK)
        except Exception as error:  # already gone is fine: this is cleanup
            log.debug("delete nexthop %d: %s", nexthop_id, error)

    def _route_message(self) -> rtmsg_with_nexthop:
        message = rtmsg_with_nexthop()
        message["family"] = socket.AF_INET
        message["dst_len"] = 32
        message["table"] = RT_TABLE_MAIN
        message["proto"] = RTPROT_STATIC
        message["type"] = RTN_UNICAST
        message["attrs"] = [("RTA_DST", self.config.vip.host), ("RTA_NH_ID", self.group_id)]
        return message

    def _set_route(self) -> None:
        self._request(self._route_message(), RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)

    def _delete_route(self) -> None:
        try:
            self._request(self._route_message(), RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)
        except Exception as error:
            log.debug("delete VIP route: %s", error)

    def _program(self, wanted: list[Endpoint]) -> None:
        if not wanted:
            # A group cannot be empty: drop the route and the group; packets to the VIP then find
            # no route, which is the honest answer when no backend is healthy.
            self._delete_route()
            self._delete_nexthop(self.group_id)
            return
        for backend in wanted:
            self._set_backend_nexthop(backend)
        self._set_group(wanted, create=not self.members)
        self._set_route()

    # -- data plane interface ---------------------------------------------------------------------

    async def start(self) -> None:
        problems = check_sysctls()
        for problem in problems:
            log.warning("ecmp: %s; flows may not hash stably (see docs/balancer.md)", problem)
        await self._in_netlink_thread(self._open)
        # Start from a clean slate: a group left by a previous run may have another bucket count.
        await self._in_netlink_thread(self._remove_all)

    def _remove_all(self) -> None:
        self._delete_route()
        for nexthop_id in (self.group_id, *self.nexthop_ids.values()):
            self._delete_nexthop(nexthop_id)

    async def apply(self, wanted: list[Endpoint]) -> None:
        wanted = sorted(wanted)
        async with self.lock:
            if wanted == self.members:
                return
            await self._in_netlink_thread(self._program, wanted)
            self.members = wanted

    def shares(self) -> dict[str, float]:
        """Each member's fraction of the group's buckets, as the kernel reports them."""
        if not self.members or self.netlink is None:
            return {}
        try:
            return self.netlink_thread.submit(self._bucket_shares).result(timeout=2)
        except Exception as error:
            log.debug("bucket dump failed: %s", error)
            return {}

    def _bucket_shares(self) -> dict[str, float]:
        request = nhmsg()
        request["family"] = socket.AF_UNSPEC
        request["attrs"] = [("NHA_ID", self.group_id)]
        counts: Counter[int] = Counter()
        try:
            for reply in self._request(request, RTM_GETNEXTHOPBUCKET, NLM_F_REQUEST | NLM_F_DUMP):
                bucket = reply.get_attr("NHA_RES_BUCKET")
                if bucket is not None:
                    counts[bucket.get_attr("NHA_RES_BUCKET_NH_ID")] += 1
        except Exception as error:
            log.debug("bucket dump failed: %s", error)
            return {}
        total = sum(counts.values()) or 1
        return {str(backend): counts.get(self.nexthop_ids[backend], 0) / total for backend in self.members}

    async def close(self) -> None:
        if self.netlink is None:
            return
        await self._in_netlink_thread(self._remove_all)
        await self._in_netlink_thread(self.netlink.close)
        self.netlink = None
        self.netlink_thread.shutdown()
