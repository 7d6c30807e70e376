//! The LB nodes' health checkers on a built lab (`zrlab_control::lb::health`, run by
//! `zrlab_scenario::lb::Deployment`): each node's probes go through the IPIP tunnel to the
//! backends' `xdp_decap`; a backend whose links go down leaves every node's rings and live-id
//! table (read back from the maps) after `fall` failed probes and nothing else does; it comes
//! back after `rise` answered ones. An LB node without a route to the backends is refused,
//! named. No services run: the probes are answered by the backends' kernels.

mod common;

use std::time::{Duration, Instant};

use zrlab_control::{lb::health::HealthPolicy, server_id::Registry};
use zrlab_scenario::{
    lb::Deployment,
    spec::{LbSpec, WorkloadSpec},
};
use zrlab_topology::{Lab, Topology};

const BACKENDS: [&str; 4] = ["be1", "be2", "be3", "be4"];
const WAIT: Duration = Duration::from_secs(10);

/// Every probe period 50 ms, stretched by the kernel matrix's time scale (`ZRLAB_TIME_SCALE`,
/// 5 in TCG guests, where a probe's round trip alone can take tens of milliseconds).
fn policy() -> HealthPolicy {
    let scale: u32 = std::env::var("ZRLAB_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    HealthPolicy { period: Duration::from_millis(50) * scale, rise: 2, fall: 2 }
}

/// `topology` built, the LB deployed on `nodes` over [`BACKENDS`].
fn deployed(runtime: &tokio::runtime::Runtime, topology: &str, nodes: &[&str]) -> (Lab, Deployment) {
    let topology = Topology::load(&common::fixtures().join("topologies").join(topology)).expect("topology");
    let lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
    let workload: WorkloadSpec =
        toml::from_str(&format!("client = \"client\"\nbackends = {BACKENDS:?}\nvip = \"203.0.113.10\""))
            .expect("workload");
    let lb: LbSpec = toml::from_str(&format!("nodes = {nodes:?}")).expect("lb section");
    let registry = Registry::assign(7, &workload.backends, u32::MAX);
    let deployment = Deployment::start(&lab, &lb, &workload, registry).expect("LB deployed");
    (lab, deployment)
}

/// Every VIP's ring slots of `backend` (one figure per VIP when the nodes agree), from the maps.
fn slots_of(deployment: &Deployment, backend: &str) -> Vec<(String, u32)> {
    let status = deployment.status().expect("status");
    status
        .rings
        .iter()
        .map(|(vip, shares)| (vip.clone(), shares.iter().find(|(b, _)| b == backend).map_or(0, |(_, n)| *n)))
        .collect()
}

#[test]
fn a_backend_whose_links_go_down_leaves_every_nodes_rings_and_comes_back_when_they_return() {
    common::require_root();
    let _alone = common::exclusive();
    let runtime = common::runtime();
    let (mut lab, mut deployment) = deployed(&runtime, "lb-ecmp.toml", &["lb1", "lb2", "lb3"]);
    deployment.check_health(&lab, policy()).expect("checkers start");

    let died = Instant::now();
    runtime.block_on(lab.kill_host("be4")).expect("be4 dies");
    let out = runtime.block_on(deployment.wait_out("be4", died, died + WAIT));
    assert!(out.is_some(), "be4 out of every node's rings within {WAIT:?}");
    // Out of both VIPs' rings on every node (the nodes agree: one figure per VIP), its id out
    // of every node's live-id table; the live backends kept theirs.
    let status = deployment.status().expect("status");
    assert_eq!(status.rings.len(), 2, "the nodes agree on both rings: {:?}", status.rings);
    assert!(slots_of(&deployment, "be4").iter().all(|(_, n)| *n == 0), "{:?}", status.rings);
    for backend in ["be1", "be2", "be3"] {
        assert!(slots_of(&deployment, backend).iter().all(|(_, n)| *n > 0), "{backend}: {:?}", status.rings);
        assert_eq!(deployment.nodes_with_live_id(backend).expect("read the maps"), 3, "{backend}'s id");
    }
    assert_eq!(deployment.nodes_with_live_id("be4").expect("read the maps"), 0, "be4's id left every node");
    let down = |node: &str| (node.to_owned(), "be4".to_owned());
    assert_eq!(status.unhealthy, [down("lb1"), down("lb2"), down("lb3")], "only be4, on every node");
    let changes = deployment.health_changes();
    assert_eq!(changes.len(), 3, "one change per node: {changes:?}");
    assert!(changes.iter().all(|c| c.backend == "be4" && !c.up), "{changes:?}");

    // Its link back: answered probes bring it back on every node.
    // Setting a link down flushed the routes through it: the default route comes back too, as
    // a host coming back up would configure it.
    let nl = &lab.node("be4").expect("be4").nl;
    runtime.block_on(nl.link_up("eth0")).expect("be4's link up");
    let default: ipnet::IpNet = "0.0.0.0/0".parse().expect("valid");
    runtime.block_on(nl.route_add_via(default, "192.0.2.13".parse().expect("valid"))).expect("be4's default route");
    common::wait_for("be4 back on every node", WAIT, || {
        deployment.health_changes().iter().filter(|c| c.up).count() == 3
    });
    assert!(slots_of(&deployment, "be4").iter().all(|(_, n)| *n > 0), "be4's slots back");
    assert_eq!(deployment.nodes_with_live_id("be4").expect("read the maps"), 3, "be4's id back");
    assert!(deployment.status().expect("status").unhealthy.is_empty());
    drop(deployment);
    lab.teardown().expect("teardown");
}

/// `lb-single.toml` gives its LB node no route to the backends: every probe would fail and the
/// checker would take every backend out, so it refuses to start, naming the node and address.
#[test]
fn an_lb_node_without_a_route_to_the_backends_is_refused_naming_it() {
    common::require_root();
    let _alone = common::exclusive();
    let runtime = common::runtime();
    let topology = Topology::load(&common::fixtures().join("topologies/lb-single.toml")).expect("topology");
    let lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
    let workload: WorkloadSpec =
        toml::from_str("client = \"client\"\nbackends = [\"be1\", \"be2\"]\nvip = \"203.0.113.10\"").expect("workload");
    let lb: LbSpec = toml::from_str("nodes = [\"lb1\"]").expect("lb section");
    let registry = Registry::assign(7, &workload.backends, u32::MAX);
    let mut deployment = Deployment::start(&lab, &lb, &workload, registry).expect("LB deployed");
    let err = deployment.check_health(&lab, policy()).expect_err("no route: refused").to_string();
    assert!(err.contains("lb1") && err.contains("no route") && err.contains("192.0.2."), "{err}");
    drop(deployment);
    lab.teardown().expect("teardown");
}
