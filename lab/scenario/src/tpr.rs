//! Deploying a scenario's `tpr` sock_ops programs (`[tpr]`): `tpr_server` on every backend's
//! cgroup with the id the server-id registry gave it, `tpr_client` on the client's cgroup.
//!
//! Deployed before the services start and the client connects: a listener only writes options
//! if the program was there when it started listening, and a socket is subject to the programs
//! of the cgroup it was created in.

use crate::{
    measures::TprTotals,
    spec::{TprSpec, WorkloadSpec},
};
use zrlab_control::{
    server_id::Registry,
    tpr::{Side, SockOpsTpr},
};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;

/// The attached programs; detached when dropped.
pub struct TprDeployment {
    programs: Vec<SockOpsTpr>,
    attachments: Vec<String>,
}

impl TprDeployment {
    /// Attaches the sides `spec` asks for.
    pub fn start(lab: &Lab, spec: &TprSpec, workload: &WorkloadSpec, registry: &Registry) -> Result<Self> {
        let mut programs = Vec::new();
        let mut attachments = Vec::new();
        if spec.server {
            for backend in &workload.backends {
                let id = registry
                    .id(backend)
                    .ok_or_else(|| LabError::Unsupported(format!("backend {backend:?} has no server id")))?;
                programs.push(SockOpsTpr::attach(Side::Server, &lab.cgroup_of(backend)?, id)?);
                attachments.push(format!("{backend} cgroup tpr_server (server id {id})"));
            }
        }
        if spec.client {
            programs.push(SockOpsTpr::attach(Side::Client, &lab.cgroup_of(&workload.client)?, 0)?);
            attachments.push(format!("{} cgroup tpr_client", workload.client));
        }
        Ok(Self { programs, attachments })
    }

    /// `node cgroup program` for every attached program.
    pub fn attachments(&self) -> Vec<String> {
        self.attachments.clone()
    }

    /// Both sides' counters, summed over nodes.
    pub fn totals(&self) -> Result<TprTotals> {
        let mut totals = TprTotals::default();
        for program in &self.programs {
            let counters = program.counters()?;
            match program.side() {
                Side::Server => totals.server += counters,
                Side::Client => totals.client += counters,
            }
        }
        Ok(totals)
    }
}
