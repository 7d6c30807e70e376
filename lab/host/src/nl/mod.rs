//! Netlink inside one namespace: one function per operation, each documented with the `ip`
//! command it replaces so that a failed step can be rerun by hand.
//!
//! An [`Nl`] opens its sockets on a thread inside the namespace (sockets stay bound to the
//! namespace they were created in) and drives them on the caller's tokio runtime. Objects are
//! looked up by name, then acted on by index, as rtnetlink's examples do.

pub mod nexthop;

use std::net::IpAddr;

use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use self::nexthop::{
    GroupMember, GroupType, NexthopAttribute, NexthopHeader, NexthopMessage, NexthopNetlinkMessage, ResGroupAttribute,
};
use crate::{
    error::{LabError, Result},
    netns::Netns,
};

/// Netlink sockets bound to one namespace.
#[derive(Clone, Debug)]
pub struct Nl {
    netns: String,
    rt: rtnetlink::Handle,
    nh: netlink_proto::ConnectionHandle<NexthopNetlinkMessage>,
}

/// A link as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Whether `IFF_UP` is set.
    pub up: bool,
    /// The link kind (`veth`, ...), if any.
    pub kind: Option<String>,
    /// Packets dropped on receive (for a veth: also frames its XDP program sent back that the
    /// peer had no room for).
    pub rx_dropped: u64,
    /// Packets dropped on transmit (for a veth: also a full peer ring).
    pub tx_dropped: u64,
}

/// A route as read back from the kernel (main table only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteState {
    /// Destination prefix.
    pub dst: IpNet,
    /// Gateway, for a plain route.
    pub gateway: Option<IpAddr>,
    /// Nexthop object id, for a route through a nexthop group.
    pub nhid: Option<u32>,
}

impl Nl {
    /// Opens netlink sockets inside `ns`. Must be called from within a tokio runtime, which then
    /// drives the connections.
    pub fn connect(ns: &Netns) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let opened = ns.run(move || {
            // The sockets register with the caller's reactor, then live on in the namespace.
            let _guard = runtime.enter();
            let rt = rtnetlink::new_connection()?;
            let nh = netlink_proto::new_connection::<NexthopNetlinkMessage>(netlink_sys::protocols::NETLINK_ROUTE)?;
            Ok::<_, std::io::Error>((rt, nh))
        })?;
        let ((rt_conn, rt, _), (nh_conn, nh, _)) =
            opened.map_err(|e| LabError::os("open netlink socket in", ns.name(), e))?;
        tokio::spawn(rt_conn);
        tokio::spawn(nh_conn);
        Ok(Self { netns: ns.name().to_owned(), rt, nh })
    }

    fn fail(&self, op: String) -> impl FnOnce(rtnetlink::Error) -> LabError + '_ {
        move |source| LabError::Netlink { op, netns: self.netns.clone(), source }
    }

    /// Index of interface `name` (`ip link show <name>`).
    pub(crate) async fn link_index(&self, name: &str) -> Result<u32> {
        let op = format!("ip link show {name}");
        let mut links = self.rt.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await.map_err(self.fail(op.clone()))? {
            Some(link) => Ok(link.header.index),
            None => Err(self.fail(op)(rtnetlink::Error::RequestFailed)),
        }
    }

    /// `ip link set <name> up`.
    pub async fn link_up(&self, name: &str) -> Result<()> {
        let index = self.link_index(name).await?;
        self.rt
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.fail(format!("ip link set {name} up")))
    }

    /// `ip link set <name> down`.
    pub async fn link_down(&self, name: &str) -> Result<()> {
        let index = self.link_index(name).await?;
        self.rt
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(self.fail(format!("ip link set {name} down")))
    }

    /// `ip link set <name> mtu <mtu>`.
    pub async fn link_set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let index = self.link_index(name).await?;
        self.rt
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(self.fail(format!("ip link set {name} mtu {mtu}")))
    }

    /// `ip link add <name> type veth peer name <peer> netns <peer_ns>`: the peer is created
    /// directly in its namespace, so neither end ever appears anywhere else.
    pub async fn veth_add(&self, name: &str, peer: &str, peer_ns: &Netns) -> Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns.as_fd().as_raw_fd()).build();
        let msg = LinkVeth::new(name, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
        self.rt
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.fail(format!("ip link add {name} type veth peer name {peer} netns {}", peer_ns.name())))
    }

    /// `ip addr add <addr> dev <ifname> [nodad]`. IPv6 addresses skip duplicate address
    /// detection: the lab's addresses are unique by construction, and DAD would leave them
    /// unusable ("tentative") for a second or more.
    pub async fn addr_add(&self, ifname: &str, addr: IpNet) -> Result<()> {
        let index = self.link_index(ifname).await?;
        let mut req = self.rt.address().add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(self.fail(format!("ip addr add {addr} dev {ifname}")))
    }

    /// `ip route add <dst> via <gateway>`.
    pub async fn route_add_via(&self, dst: IpNet, gateway: IpAddr) -> Result<()> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .and_then(|b| b.gateway(gateway))
            .map_err(|e| invalid(self.fail(format!("ip route add {dst} via {gateway}")), e))?
            .build();
        self.route_add(msg, format!("ip route add {dst} via {gateway}"), false).await
    }

    /// `ip route {add,replace} <dst> nhid <id>`.
    pub async fn route_add_nhid(&self, dst: IpNet, nhid: u32, replace: bool) -> Result<()> {
        let verb = if replace { "replace" } else { "add" };
        let op = format!("ip route {verb} {dst} nhid {nhid}");
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| invalid(self.fail(op.clone()), e))?
            .nhid(nhid)
            .build();
        self.route_add(msg, op, replace).await
    }

    async fn route_add(&self, msg: RouteMessage, op: String, replace: bool) -> Result<()> {
        let req = self.rt.route().add(msg);
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(self.fail(op))
    }

    /// `ip nexthop add id <id> via <gateway> dev <ifname>`.
    pub async fn nexthop_add(&self, id: u32, gateway: IpAddr, ifname: &str) -> Result<()> {
        let oif = self.link_index(ifname).await?;
        let family = if gateway.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
        let msg = NexthopMessage {
            header: NexthopHeader { family, ..Default::default() },
            attributes: vec![NexthopAttribute::Id(id), NexthopAttribute::Oif(oif), NexthopAttribute::Gateway(gateway)],
        };
        let op = format!("ip nexthop add id {id} via {gateway} dev {ifname}");
        self.nexthop_request(op, NexthopNetlinkMessage::New(msg), NLM_F_CREATE | NLM_F_EXCL).await?;
        Ok(())
    }

    /// `ip nexthop {add,replace} id <id> group <a>/<b>/... type {mpath,resilient buckets <n>}`.
    pub async fn nexthop_group_set(
        &self,
        id: u32,
        members: &[u32],
        kind: GroupType,
        buckets: u16,
        replace: bool,
    ) -> Result<()> {
        let mut attributes = vec![
            NexthopAttribute::Id(id),
            NexthopAttribute::Group(members.iter().map(|&id| GroupMember { id, weight: 1 }).collect()),
            NexthopAttribute::GroupType(kind),
        ];
        let type_text = match kind {
            GroupType::HashThreshold => "mpath".to_owned(),
            GroupType::Resilient => {
                // A replace may not change the bucket count of a resilient group.
                if !replace {
                    attributes.push(NexthopAttribute::ResGroup(vec![ResGroupAttribute::Buckets(buckets)]));
                }
                format!("resilient buckets {buckets}")
            }
        };
        let group: Vec<String> = members.iter().map(u32::to_string).collect();
        let verb = if replace { "replace" } else { "add" };
        let op = format!("ip nexthop {verb} id {id} group {} type {type_text}", group.join("/"));
        let flags = NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let msg = NexthopMessage { header: NexthopHeader::default(), attributes };
        self.nexthop_request(op, NexthopNetlinkMessage::New(msg), flags).await?;
        Ok(())
    }

    /// `ip nexthop show`.
    pub async fn nexthops(&self) -> Result<Vec<NexthopMessage>> {
        self.nexthop_request(
            "ip nexthop show".into(),
            NexthopNetlinkMessage::Get(NexthopMessage::default()),
            NLM_F_DUMP,
        )
        .await
    }

    async fn nexthop_request(&self, op: String, msg: NexthopNetlinkMessage, flags: u16) -> Result<Vec<NexthopMessage>> {
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut responses = self
            .nh
            .request(req, netlink_sys::SocketAddr::new(0, 0))
            .map_err(|_| self.fail(op.clone())(rtnetlink::Error::RequestFailed))?;
        let mut found = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(self.fail(op)(rtnetlink::Error::NetlinkError(err)));
                }
                NetlinkPayload::InnerMessage(NexthopNetlinkMessage::New(found_msg)) => found.push(found_msg),
                _ => {}
            }
        }
        Ok(found)
    }

    /// `ip link show`.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        let links: Vec<_> =
            self.rt.link().get().execute().try_collect().await.map_err(self.fail("ip link show".into()))?;
        Ok(links
            .into_iter()
            .map(|link| {
                let mut state = LinkState {
                    index: link.header.index,
                    name: String::new(),
                    up: link.header.flags.contains(LinkFlags::Up),
                    kind: None,
                    rx_dropped: 0,
                    tx_dropped: 0,
                };
                for attr in link.attributes {
                    match attr {
                        LinkAttribute::IfName(name) => state.name = name,
                        LinkAttribute::Stats64(stats) => {
                            state.rx_dropped = stats.rx_dropped;
                            state.tx_dropped = stats.tx_dropped;
                        }
                        LinkAttribute::LinkInfo(infos) => {
                            for info in infos {
                                if let netlink_packet_route::link::LinkInfo::Kind(kind) = info {
                                    state.kind = Some(kind.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                state
            })
            .collect())
    }

    /// `ip addr show dev <ifname>`: the addresses on an interface.
    pub async fn addrs(&self, ifname: &str) -> Result<Vec<IpNet>> {
        let index = self.link_index(ifname).await?;
        let msgs: Vec<_> = self
            .rt
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.fail(format!("ip addr show dev {ifname}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|msg| {
                let prefix = msg.header.prefix_len;
                msg.attributes.into_iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => IpNet::new(ip, prefix).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// `ip route show` and `ip -6 route show` (main table, unicast routes the lab added).
    pub async fn routes(&self) -> Result<Vec<RouteState>> {
        let mut routes = Vec::new();
        for family in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> =
                self.rt.route().get(family).execute().try_collect().await.map_err(self.fail("ip route show".into()))?;
            for msg in msgs {
                if msg.header.table != libc::RT_TABLE_MAIN {
                    continue;
                }
                let prefix = msg.header.destination_prefix_length;
                let mut route = RouteState { dst: IpNet::default(), gateway: None, nhid: None };
                let mut dst = None;
                for attr in &msg.attributes {
                    match attr {
                        RouteAttribute::Destination(addr) => dst = ip_of(addr),
                        RouteAttribute::Gateway(addr) => route.gateway = ip_of(addr),
                        RouteAttribute::NhId(id) => route.nhid = Some(*id),
                        _ => {}
                    }
                }
                let dst = dst.unwrap_or(if msg.header.address_family == netlink_packet_route::AddressFamily::Inet6 {
                    IpAddr::from([0u16; 8])
                } else {
                    IpAddr::from([0u8; 4])
                });
                if let Ok(net) = IpNet::new(dst, prefix) {
                    route.dst = net;
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }
}

/// A route the builder refused (a prefix that does not fit its family), as a netlink error.
fn invalid(fail: impl FnOnce(rtnetlink::Error) -> LabError, e: impl std::fmt::Debug) -> LabError {
    fail(rtnetlink::Error::InvalidNla(format!("{e:?}")))
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}
