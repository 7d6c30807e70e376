//! The topology builder, checked by reading the kernel's state back over netlink, and the
//! lab's teardown after success and panic.

mod common;

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use zrlab_host::nl::nexthop::GroupType;
use zrlab_topology::{Lab, Topology};

fn dual_stack() -> Topology {
    Topology::load(&common::fixtures().join("topologies/dual-stack.toml")).expect("valid topology")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("valid prefix")
}

use common::runtime;

#[test]
fn builder_creates_what_the_file_says() {
    common::require_root();
    runtime().block_on(async {
        let topology = dual_stack();
        let lab = Lab::build(&topology, false).await.expect("build");
        let prefix = lab.run_id().to_string();

        // Links: every veth end exists, is a veth, and is up; loopback is up.
        for node in &topology.spec.nodes {
            let links = lab.node(&node.name).unwrap().nl.links().await.expect("links");
            let by_name: BTreeMap<_, _> = links.iter().map(|l| (l.name.as_str(), l)).collect();
            assert!(by_name["lo"].up, "{}: lo is up", node.name);
            let ends = topology.spec.links.iter().flat_map(|l| [&l.a, &l.b]).filter(|e| e.node == node.name);
            for end in ends {
                let link =
                    by_name.get(end.ifname.as_str()).unwrap_or_else(|| panic!("{}:{} exists", node.name, end.ifname));
                assert!(link.up, "{}:{} is up", node.name, end.ifname);
                assert_eq!(link.kind.as_deref(), Some("veth"));
                let mut addrs = lab.node(&node.name).unwrap().nl.addrs(&end.ifname).await.expect("addrs");
                addrs.retain(|a| !matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] == 0xfe80));
                addrs.sort();
                let mut wanted = end.addrs.clone();
                wanted.sort();
                assert_eq!(addrs, wanted, "{}:{} addresses", node.name, end.ifname);
            }
            let mut lo = lab.node(&node.name).unwrap().nl.addrs("lo").await.expect("lo addrs");
            lo.retain(|a| !a.addr().is_loopback());
            lo.sort();
            let mut wanted = node.loopback.clone();
            wanted.sort();
            assert_eq!(lo, wanted, "{}: loopback addresses", node.name);
        }

        // Groups: the IPv4 group is resilient with 64 buckets over be1 and be2's gateways.
        let router = &lab.node("router").unwrap().nl;
        let nexthops = router.nexthops().await.expect("nexthops");
        let gateway_of: BTreeMap<u32, IpAddr> = nexthops.iter().filter_map(|n| Some((n.id()?, n.gateway()?))).collect();
        let groups: Vec<_> = nexthops.iter().filter(|n| n.group().is_some()).collect();
        assert_eq!(groups.len(), 2, "{nexthops:?}");
        let routes = router.routes().await.expect("routes");
        let route_to = |dst: &str| routes.iter().find(|r| r.dst == net(dst)).unwrap_or_else(|| panic!("route {dst}"));
        let members = |id: u32| -> (GroupType, Option<u16>, Vec<IpAddr>) {
            let group = groups.iter().find(|g| g.id() == Some(id)).expect("group of the route");
            let gateways = group.group().unwrap().iter().map(|m| gateway_of[&m.id]).collect();
            (group.group_type().unwrap(), group.buckets(), gateways)
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = route_to("203.0.113.10/32").nhid.expect("IPv4 VIP route uses a group");
        assert_eq!(members(v4), (GroupType::Resilient, Some(64), vec![ip("192.0.2.2"), ip("192.0.2.6")]));
        let v6 = route_to("2001:db8:ffff::10/128").nhid.expect("IPv6 VIP route uses a group");
        assert_eq!(members(v6), (GroupType::HashThreshold, None, vec![ip("2001:db8:1::2"), ip("2001:db8:2::2")]));

        // Plain routes.
        let client_routes = lab.node("client").unwrap().nl.routes().await.expect("client routes");
        for (dst, via) in [("0.0.0.0/0", "198.51.100.1"), ("::/0", "2001:db8:100::1")] {
            assert!(
                client_routes.iter().any(|r| r.dst == net(dst) && r.gateway == Some(ip(via))),
                "client route {dst} via {via} in {client_routes:?}"
            );
        }

        // Router sysctls, read from inside its namespace.
        let sysctls = lab
            .node("router")
            .unwrap()
            .netns
            .run(|| {
                ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/fib_multipath_hash_policy"]
                    .map(|key| std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap().trim().to_owned())
            })
            .unwrap();
        assert_eq!(sysctls, ["1", "1", "3"]);

        assert!(!common::objects_with_prefix(&prefix).is_empty(), "the lab's objects are visible");
        lab.teardown().expect("teardown");
        assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "nothing left after teardown");
    });
}

#[test]
fn group_events_rewrite_the_kernel_group() {
    common::require_root();
    runtime().block_on(async {
        let mut lab = Lab::build(&dual_stack(), false).await.expect("build");
        let gateways = |lab: &Lab| {
            let lab_router = lab.node("router").unwrap().nl.clone();
            async move {
                let nexthops = lab_router.nexthops().await.unwrap();
                let gw: BTreeMap<u32, IpAddr> = nexthops.iter().filter_map(|n| Some((n.id()?, n.gateway()?))).collect();
                let group = nexthops
                    .iter()
                    .find(|n| n.group().is_some() && n.group_type() == Some(GroupType::Resilient))
                    .unwrap()
                    .clone();
                group.group().unwrap().iter().map(|m| gw[&m.id].to_string()).collect::<Vec<_>>()
            }
        };
        lab.replace_member("vip4", "be2", "be1").await.expect("replace");
        assert_eq!(gateways(&lab).await, ["192.0.2.2", "192.0.2.2"]);
        assert_eq!(lab.group_members("vip4").unwrap(), ["be1", "be1"]);
        lab.remove_member("vip4", "be1").await.expect_err("removing both slots of be1 at once is not one member");
        lab.add_member("vip4", "be2").await.expect("add");
        assert_eq!(gateways(&lab).await, ["192.0.2.2", "192.0.2.2", "192.0.2.6"]);
        lab.teardown().expect("teardown");
    });
}

#[test]
fn panic_while_built_still_tears_down() {
    common::require_root();
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime().block_on(async {
            let lab = Lab::build(&dual_stack(), false).await.expect("build");
            *prefix.lock().unwrap() = lab.run_id().to_string();
            assert!(!common::objects_with_prefix(&lab.run_id().to_string()).is_empty());
            panic!("deliberate panic with the lab up");
        })
    }));
    assert!(result.is_err(), "the closure panicked");
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "Drop tore the lab down");
}
