//! Handing a loaded object over to a new version of itself while it runs: which maps the new
//! version takes over as they are, which it migrates and which it starts empty ([`plan`]), by
//! comparing the two objects' map definitions as their ELFs declare them (no map is created for
//! this). The loading (`Loaded::load_reusing`) and the swap of attachments
//! (`Loaded::hand_over_xdp`, `Loaded::hand_over_links`) are `crate::bpf`'s.
//!
//! A map both versions define alike is handed over: the new programs use the very kernel map,
//! so nothing in it is copied and nothing is lost. A map whose definition changed must be one
//! the caller migrates or starts empty for a reason it states; any other refuses the hand-over,
//! naming the map: aya's loader takes over a pinned map whose layout changed without a word, and
//! the new program would misread the old entries.

use std::collections::HashMap;

use zrlab_host::error::{LabError, Result};

use crate::bpf::Object;

/// What a hand-over does with each map, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Taken over as they are.
    pub handed_over: Vec<String>,
    /// Changed, migrated by the caller.
    pub migrated: Vec<String>,
    /// Changed (or new), started empty.
    pub reset: Vec<String>,
}

/// The plan from `from` to `to`, the caller migrating the changed maps named in `migrations`
/// and starting those in `resets` empty; an error naming a changed map that neither covers.
pub fn plan(from: Object, to: Object, migrations: &[&str], resets: &[&str]) -> Result<Plan> {
    plan_between((from.name(), &from.map_definitions()?), (to.name(), to.map_definitions()?), migrations, resets)
}

/// [`plan`] over two objects' map definitions (each with its object's name).
fn plan_between(
    (from, old): (&str, &HashMap<String, aya_obj::Map>),
    (to, new): (&str, HashMap<String, aya_obj::Map>),
    migrations: &[&str],
    resets: &[&str],
) -> Result<Plan> {
    let mut new: Vec<(String, aya_obj::Map)> = new.into_iter().collect();
    new.sort_by(|a, b| a.0.cmp(&b.0));
    let mut plan = Plan::default();
    for (name, def) in new {
        // Global data (`.rodata`: load-time configuration) is set anew by the loader.
        if !matches!(def.section_kind(), aya_obj::EbpfSectionKind::Maps | aya_obj::EbpfSectionKind::BtfMaps) {
            continue;
        }
        let Some(before) = old.get(&name) else {
            // A map the old version did not have starts empty.
            plan.reset.push(name);
            continue;
        };
        if shape(before) == shape(&def) {
            plan.handed_over.push(name);
        } else if migrations.contains(&name.as_str()) {
            plan.migrated.push(name);
        } else if resets.contains(&name.as_str()) {
            plan.reset.push(name);
        } else {
            return Err(LabError::Unsupported(format!(
                "upgrading {from} to {to}: map {name} changes its definition ({} to {}) and no migration \
                 is known for it; refusing rather than handing the new program entries it would misread",
                describe(before),
                describe(&def),
            )));
        }
    }
    Ok(plan)
}

/// A map's type, sizes, capacity and flags.
type Shape = (u32, u32, u32, u32, u32);

/// What must match for a map to be handed over: its [`Shape`] and its inner map template's.
fn shape(def: &aya_obj::Map) -> (Shape, Option<Shape>) {
    let flat = |d: &aya_obj::Map| (d.map_type(), d.key_size(), d.value_size(), d.max_entries(), d.map_flags());
    (flat(def), def.inner().map(|inner| flat(&inner)))
}

fn describe(def: &aya_obj::Map) -> String {
    let inner = def.inner().map(|i| format!(", inner value {} bytes", i.value_size())).unwrap_or_default();
    format!("type {}, key {} bytes, value {} bytes{inner}", def.map_type(), def.key_size(), def.value_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATED: [&str; 2] = ["LB_CONNS", "LB_CONNS6"];
    const RESET: [&str; 1] = ["LB_SYN_CACHE"];

    /// A changed map no migration covers refuses the upgrade and names the map; a map the
    /// old version lacks starts empty.
    #[test]
    fn a_changed_map_without_a_migration_is_refused() {
        let old = Object::XdpLb.map_definitions().expect("defs");
        let mut new = Object::XdpLbNext.map_definitions().expect("defs");
        let reals = new.get_mut("LB_REALS").expect("LB_REALS");
        reals.set_value_size(reals.value_size() + 8);
        let e = plan_between(("xdp_lb", &old), ("xdp_lb_next", new), &MIGRATED, &RESET).unwrap_err().to_string();
        assert!(e.contains("map LB_REALS changes its definition") && e.contains("no migration is known"), "{e}");
        let mut new = Object::XdpLbNext.map_definitions().expect("defs");
        let extra = new.get("LB_REALS").expect("LB_REALS").clone();
        new.insert("LB_EXTRA".into(), extra);
        let Plan { reset, .. } = plan_between(("xdp_lb", &old), ("xdp_lb_next", new), &MIGRATED, &RESET).expect("plan");
        assert_eq!(reset, ["LB_EXTRA"]);
    }

    /// An object to itself: every map handed over, whatever the caller would migrate.
    #[test]
    fn an_object_to_itself_hands_every_map_over() {
        for object in [Object::Tpr, Object::SkLookupSteer, Object::ReuseportSelect] {
            let plan = plan(object, object, &[], &[]).expect("plan");
            assert!(plan.migrated.is_empty() && plan.reset.is_empty() && !plan.handed_over.is_empty(), "{plan:?}");
        }
    }
}
