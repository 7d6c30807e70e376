//! The shipped scenarios, end to end: each passes, which means its main run met its
//! expectations and its control run showed the failure the fix prevents. `--keep` leaves a
//! topology up that only an explicit `zrlab clean` removes.

mod common;

use std::process::Command;

use test_case::test_case;
use zrlab::{
    clean::{Scope, clean},
    scenario::{RunOptions, Scenario, Verdict, run_scenario},
};

#[test_case("ecmp-hash-threshold", true)]
#[test_case("ecmp-resilient", true)]
#[test_case("lb-basic", false)]
#[test_case("lb-backend-drain", false)]
#[test_case("lb-failover-no-id-routing", false)]
fn shipped_scenario_passes_and_its_control_fails(name: &str, takes_a_backend_down: bool) {
    common::require_root();
    let scenario = Scenario::load(&common::fixtures().join(format!("scenarios/{name}.toml"))).expect("valid scenario");
    let opts = RunOptions { keep: false, service_exe: common::zrlab_exe(), time_scale: 1 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let outcome = runtime.block_on(run_scenario(&scenario, &opts, &mut |_| {})).expect("scenario ran");
    if outcome.verdict == Verdict::Skip {
        eprintln!("SKIPPED {name}: {}", outcome.reason);
        return;
    }
    assert_eq!(outcome.verdict, Verdict::Pass, "{name}: {}", outcome.reason);
    let main = outcome.main.expect("main ran").tally;
    let control = outcome.control.expect("control ran").tally;
    // Restated here so that a scenario file edited into a test that cannot fail is caught.
    assert_eq!(main.counted.resets, 0, "{name}: main run resets");
    assert!(control.counted.resets > 0, "{name}: the control shows resets on flows whose backend stayed up");
    if takes_a_backend_down {
        assert!(main.excused.flows > 0, "{name}: the event did take a backend's flows away");
    }
    assert!(main.counted.flows + main.excused.flows >= 400, "{name}: at least 200 TCP and 200 UDP flows");
}

#[test]
fn kept_topology_survives_other_runs_until_clean() {
    common::require_root();
    let _lock = common::exclusive();
    // Whatever happens below, the kept topology must not outlive the test.
    let _cleanup = CleanOnDrop;
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keep-report");
    let run = Command::new(common::zrlab_exe())
        .arg("run")
        .arg(common::fixtures().join("scenarios/ecmp-resilient.toml"))
        .arg("--keep")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("zrlab run --keep");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "zrlab run --keep: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    let prefix = format!("zrlabk-{}-", run_pid(&stdout));
    assert!(stdout.contains(&format!("ip netns exec {prefix}")), "prints how to enter the nodes: {stdout}");

    let kept = common::objects_with_prefix(&prefix);
    assert!(kept.iter().any(|o| o.ends_with("-router")), "the kept topology is up: {kept:?}");
    clean(Scope::Crashed).expect("automatic clean");
    assert_eq!(common::objects_with_prefix(&prefix), kept, "the automatic clean leaves kept runs alone");

    let clean_run = Command::new(common::zrlab_exe()).arg("clean").output().expect("zrlab clean");
    assert!(clean_run.status.success());
    assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "zrlab clean removes kept runs");
}

struct CleanOnDrop;

impl Drop for CleanOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(common::zrlab_exe()).arg("clean").output();
    }
}

/// The pid in the first `ip netns exec zrlabk-<pid>-...` line.
fn run_pid(stdout: &str) -> u32 {
    let at = stdout.find("zrlabk-").expect("a kept namespace name") + "zrlabk-".len();
    stdout[at..].split('-').next().and_then(|p| p.parse().ok()).expect("a pid")
}
