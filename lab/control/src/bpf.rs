//! The eBPF objects built by `build.rs`, embedded in the binary.
//!
//! Each program of `ebpf/programs` is its own object, so a node loads only what it runs.

use aya::{
    Ebpf, EbpfError, EbpfLoader, Pod,
    maps::Map,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, SkLookup, SkReuseport, SockOps, TcAttachType, Xdp, XdpMode,
        tc::TcAttachOptions, xdp::XdpLinkId,
    },
};

use std::os::fd::{AsFd as _, BorrowedFd};

use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

/// One embedded eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// `xdp_pass`: counts and passes every frame (`zrlab_common::pass`).
    XdpPass,
    /// `xdp_lb` and `xdp_lb_bench`: the L4 load balancer (`zrlab_common::lb`).
    XdpLb,
    /// The same programs of the version an in-place upgrade moves to: another
    /// connection-table layout (`zrlab_common::lb::ConnEntryNext`).
    XdpLbNext,
    /// `xdp_decap`: the backends' IPIP decapsulation (`zrlab_common::decap`).
    XdpDecap,
    /// `xdp_empty`: the benchmark floor.
    XdpEmpty,
    /// `tpr_server` and `tpr_client`: the server id in a TCP header option (`zrlab_common::tpr`).
    Tpr,
    /// `tpr_fill`: a test fixture that fills the TCP option space.
    TprFill,
    /// `rs_select` and `rs_select_or_migrate`: a release's socket dispatcher
    /// (`zrlab_common::reuseport`).
    ReuseportSelect,
    /// `xdp_drop_ack`: a test fixture that drops handshake segments of one port (final ACKs,
    /// SYN-ACKs: `zrlab_common::drop`).
    XdpDropAck,
    /// `sk_lookup_steer`: a release's alternative dispatcher (`zrlab_common::sklookup`).
    SkLookupSteer,
    /// `impair_ingress` and `impair_egress`: seeded loss and duplication on an interface
    /// (`zrlab_common::impair`).
    TcImpair,
}

impl Object {
    /// The object's name (its `[[bin]]` name in `ebpf/programs`).
    pub fn name(self) -> &'static str {
        match self {
            Self::XdpPass => "xdp_pass",
            Self::XdpLb => "xdp_lb",
            Self::XdpLbNext => "xdp_lb_next",
            Self::XdpDecap => "xdp_decap",
            Self::XdpEmpty => "xdp_empty",
            Self::Tpr => "tpr",
            Self::TprFill => "tpr_fill",
            Self::ReuseportSelect => "reuseport_select",
            Self::XdpDropAck => "xdp_drop_ack",
            Self::SkLookupSteer => "sk_lookup_steer",
            Self::TcImpair => "tc_impair",
        }
    }

    /// The object's ELF bytes, aligned as aya needs.
    pub(crate) fn bytes(self) -> &'static [u8] {
        match self {
            Self::XdpPass => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pass")),
            Self::XdpLb => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb")),
            Self::XdpLbNext => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb_next")),
            Self::XdpDecap => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_decap")),
            Self::XdpEmpty => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_empty")),
            Self::Tpr => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tpr")),
            Self::TprFill => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tpr_fill")),
            Self::ReuseportSelect => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reuseport_select")),
            Self::XdpDropAck => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_drop_ack")),
            Self::SkLookupSteer => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_lookup_steer")),
            Self::TcImpair => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_impair")),
        }
    }

    /// Parses the object and creates its maps (programs are loaded by the caller).
    pub fn load(self) -> Result<Ebpf, EbpfError> {
        Ebpf::load(self.bytes())
    }

    /// As [`Object::load`], with the read-only global `name` set to `value` first (load-time
    /// configuration). The global must exist.
    pub(crate) fn load_with<T: Pod>(self, name: &str, value: &T) -> Result<Ebpf, EbpfError> {
        EbpfLoader::new().override_global(name, value, true).load(self.bytes())
    }

    /// The object's map definitions as its ELF declares them (no map is created).
    pub(crate) fn map_definitions(self) -> Result<std::collections::HashMap<String, aya_obj::Map>> {
        let object = aya_obj::Object::parse(self.bytes())
            .map_err(|e| LabError::Bpf { what: format!("parse the {} object", self.name()), message: e.to_string() })?;
        Ok(object.maps)
    }
}

/// An embedded object, loaded, with its XDP programs verified.
pub struct Loaded {
    object: Object,
    ebpf: Ebpf,
    /// The XDP links of [`Loaded::attach_xdp`], by program: what [`Loaded::hand_over_xdp`]
    /// moves to a new version.
    xdp_links: Vec<(String, XdpLinkId)>,
    /// The sock_ops and sk_lookup links, whose descriptors the lab holds itself (aya hides
    /// them) so that [`Loaded::hand_over_links`] can swap their program. Closed (detached)
    /// when this value is dropped.
    links: Vec<OwnLink>,
}

/// A link the lab created and holds.
#[derive(Debug)]
struct OwnLink {
    /// The program's name in the object.
    program: String,
    kind: LinkKind,
    fd: std::os::fd::OwnedFd,
}

/// The program types the lab attaches with links of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkKind {
    SockOps,
    SkLookup,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("object", &self.object).finish_non_exhaustive()
    }
}

impl Loaded {
    /// Loads `object` and verifies its XDP programs `programs`; a refusal carries the end of
    /// the verifier's log.
    pub fn load(object: Object, programs: &[&str]) -> Result<Self> {
        Self::verified(object, object.load(), programs)
    }

    /// As [`Loaded::load`], with the read-only global `global.0` set to `global.1`.
    pub fn load_with<T: Pod>(object: Object, global: (&str, &T), programs: &[&str]) -> Result<Self> {
        Self::verified(object, object.load_with(global.0, global.1), programs)
    }

    /// As [`Loaded::load`], with the loader set up by `configure` (globals, map sizes).
    pub fn load_configured<'a>(
        object: Object,
        configure: impl FnOnce(&mut EbpfLoader<'a>),
        programs: &[&str],
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        configure(&mut loader);
        Self::verified(object, loader.load(object.bytes()), programs)
    }

    /// Loads `object` as `configure` sets the loader up (globals), with the maps named `reuse`
    /// not created but taken over from `from` (a loaded object of an earlier version), and
    /// verifies its XDP programs `programs`: the new programs use the very maps the old ones
    /// do, entries and all. The maps are handed over by pinning them in a bpffs only the
    /// loading thread sees (`zrlab_host::bpffs`). Which maps may be handed over is
    /// `crate::handover::plan`'s to say: the loader does not check.
    pub fn load_reusing<'a>(
        object: Object,
        configure: impl FnOnce(&mut EbpfLoader<'a>) + Send,
        programs: &[&str],
        from: &Loaded,
        reuse: &'a [String],
    ) -> Result<Self> {
        let ebpf = zrlab_host::bpffs::with_private(|dir| {
            let mut loader = EbpfLoader::new();
            configure(&mut loader);
            for name in reuse {
                let path = dir.join(name);
                from.map(name)?.pin(&path).map_err(|e| LabError::Bpf {
                    what: format!("pin map {name} of {} to hand it over", from.object.name()),
                    message: error_chain(&e),
                })?;
                loader.map_pin_path(name, path);
            }
            Ok::<_, LabError>(loader.load(object.bytes()))
        })??;
        Self::verified(object, ebpf, programs)
    }

    /// A second instance of this object that takes over every one of its maps and its
    /// sock_ops and sk_lookup attachments ([`Loaded::hand_over_links`]): the reload a new
    /// build of these programs goes through. Their maps must be defined alike (a new build that
    /// changes one is refused, naming it). XDP attachments move with
    /// [`Loaded::hand_over_xdp`]; an `SK_REUSEPORT` group takes the new program when it is
    /// attached to it again.
    pub fn reload(&mut self) -> Result<Self> {
        let plan = crate::handover::plan(self.object, self.object, &[], &[])?;
        let mut new = Self::load_reusing(self.object, |_| {}, &[], self, &plan.handed_over)?;
        self.hand_over_links(&mut new)?;
        Ok(new)
    }

    fn verified(object: Object, ebpf: Result<Ebpf, EbpfError>, programs: &[&str]) -> Result<Self> {
        let ebpf = ebpf.map_err(|e| LabError::Bpf {
            what: format!("load the {} object", object.name()),
            message: format!("{e:#}"),
        })?;
        let mut loaded = Self { object, ebpf, xdp_links: Vec::new(), links: Vec::new() };
        for name in programs {
            loaded.verify(name)?;
        }
        Ok(loaded)
    }

    /// Verifies and loads the XDP program `name` of the object (if it is not loaded yet).
    pub(crate) fn verify(&mut self, name: &str) -> Result<()> {
        let program = self.xdp_mut(name)?;
        if program.fd().is_ok() {
            return Ok(());
        }
        program.load().map_err(|e| LabError::Bpf { what: format!("verify {name}"), message: verifier_log(&e) })
    }

    /// The XDP program `name`.
    pub fn xdp(&self, name: &str) -> Result<&Xdp> {
        self.ebpf.program(name).ok_or_else(|| missing("program", name))?.try_into().map_err(|e: ProgramError| {
            LabError::Bpf { what: format!("{name} as an XDP program"), message: e.to_string() }
        })
    }

    /// The XDP program `name`, mutably.
    pub(crate) fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf.program_mut(name).ok_or_else(|| missing("program", name))?.try_into().map_err(|e: ProgramError| {
            LabError::Bpf { what: format!("{name} as an XDP program"), message: e.to_string() }
        })
    }

    /// Attaches XDP program `name` in native mode to `ifname` inside `netns`. It stays attached
    /// until this value is dropped or the namespace is removed.
    pub fn attach_xdp(&mut self, name: &str, netns: &Netns, ifname: &str) -> Result<()> {
        self.attach_xdp_in(name, netns, ifname, XdpMode::Driver)
    }

    /// As [`Loaded::attach_xdp`], in `mode` (`XdpMode::Skb` for devices without native XDP,
    /// such as `lo`).
    pub fn attach_xdp_in(&mut self, name: &str, netns: &Netns, ifname: &str, mode: XdpMode) -> Result<()> {
        let program = self.xdp_mut(name)?;
        let link = netns.run(|| program.attach(ifname, mode))?.map_err(|e| LabError::Bpf {
            what: format!("attach {name} to {ifname} in {}", netns.name()),
            message: e.to_string(),
        })?;
        self.xdp_links.push((name.to_owned(), link));
        Ok(())
    }

    /// Moves every attachment of XDP program `name` to the program of the same name in `to`
    /// (verified first), each with one `BPF_LINK_UPDATE` of its link: the interface runs the
    /// old program or the new one, never none. On kernels whose XDP attachments are not links
    /// aya replaces the program through netlink, also atomically (`XDP_FLAGS_REPLACE`).
    pub fn hand_over_xdp(&mut self, name: &str, to: &mut Loaded) -> Result<usize> {
        to.verify(name)?;
        let links: Vec<XdpLinkId> = {
            let (mine, others) = std::mem::take(&mut self.xdp_links).into_iter().partition(|(n, _)| n == name);
            self.xdp_links = others;
            mine.into_iter().map(|(_, id)| id).collect()
        };
        let count = links.len();
        for id in links {
            let link = self.xdp_mut(name)?.take_link(id).map_err(|e| LabError::Bpf {
                what: format!("take the link of {name} from {}", self.object.name()),
                message: error_chain(&e),
            })?;
            let new = to.xdp_mut(name)?.attach_to_link(link).map_err(|e| LabError::Bpf {
                what: format!("update the link of {name} to {}", to.object.name()),
                message: error_chain(&e),
            })?;
            to.xdp_links.push((name.to_owned(), new));
        }
        Ok(count)
    }

    /// Verifies the sock_ops program `name` (if it is not loaded yet) and attaches it to the
    /// cgroup v2 directory `cgroup` with a BPF link (5.7+), which coexists with other programs
    /// of the cgroup. It stays attached until this value is dropped.
    pub fn attach_sock_ops(&mut self, name: &str, cgroup: &std::path::Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup).map_err(|e| LabError::os("open", cgroup.display().to_string(), e))?;
        self.link(LinkKind::SockOps, name, dir.as_fd(), &format!("cgroup {}", cgroup.display()))
    }

    /// Verifies the sk_lookup program `name` (if it is not loaded yet) and attaches it to
    /// `netns` with a BPF link. It stays attached until this value is dropped.
    pub(crate) fn attach_sk_lookup(&mut self, name: &str, netns: &Netns) -> Result<()> {
        self.link(LinkKind::SkLookup, name, netns.as_fd(), netns.name())
    }

    /// Attaches program `name` of `kind` to `target` (named `what` in errors) with a link of
    /// our own.
    fn link(&mut self, kind: LinkKind, name: &str, target: BorrowedFd<'_>, what: &str) -> Result<()> {
        let prog = self.program_fd(kind, name)?;
        let attach_type = match kind {
            LinkKind::SockOps => zrlab_host::bpf_sys::ATTACH_CGROUP_SOCK_OPS,
            LinkKind::SkLookup => zrlab_host::bpf_sys::ATTACH_SK_LOOKUP,
        };
        let fd = zrlab_host::bpf_sys::link_create(prog.as_fd(), target, attach_type)
            .map_err(|e| LabError::Bpf { what: format!("attach {name} to {what}"), message: e.to_string() })?;
        self.links.push(OwnLink { program: name.to_owned(), kind, fd });
        Ok(())
    }

    /// A descriptor of program `name` of `kind`, verified (if it is not loaded yet).
    fn program_fd(&mut self, kind: LinkKind, name: &str) -> Result<std::os::fd::OwnedFd> {
        let fd = match kind {
            LinkKind::SockOps => self.loaded_program::<SockOps>(name, "a sock_ops", SockOps::load)?.fd(),
            LinkKind::SkLookup => self.loaded_program::<SkLookup>(name, "an sk_lookup", SkLookup::load)?.fd(),
        };
        let fd = fd.map_err(|e| LabError::Bpf { what: format!("the descriptor of {name}"), message: e.to_string() })?;
        fd.as_fd().try_clone_to_owned().map_err(|e| LabError::os("dup", format!("the descriptor of {name}"), e))
    }

    /// Moves every sock_ops and sk_lookup link of this object to the program of the same name
    /// in `to` (verified first), each with one `BPF_LINK_UPDATE`: every socket event runs the
    /// old program or the new one, never none. The number of links moved.
    pub fn hand_over_links(&mut self, to: &mut Loaded) -> Result<usize> {
        let count = self.links.len();
        for link in std::mem::take(&mut self.links) {
            let prog = to.program_fd(link.kind, &link.program)?;
            zrlab_host::bpf_sys::link_update(link.fd.as_fd(), prog.as_fd()).map_err(|e| LabError::Bpf {
                what: format!("update the link of {} to a new {}", link.program, to.object.name()),
                message: e.to_string(),
            })?;
            to.links.push(link);
        }
        Ok(count)
    }

    /// Verifies the classifier `name` (if it is not loaded yet) and attaches it with TCX
    /// (kernel 6.6+, no qdisc needed) to `ifname` inside `netns`, at `hook`, after the
    /// interface's other TCX programs. It stays attached until this value is dropped or the
    /// namespace is removed.
    pub fn attach_tcx(&mut self, name: &str, netns: &Netns, ifname: &str, hook: TcAttachType) -> Result<()> {
        let program = self.loaded_program::<SchedClassifier>(name, "a classifier", SchedClassifier::load)?;
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        netns.run(|| program.attach_with_options(ifname, hook, options).map(drop))?.map_err(|e| LabError::Bpf {
            what: format!("attach {name} with TCX to {ifname} in {}", netns.name()),
            message: error_chain(&e),
        })
    }

    /// The `SK_REUSEPORT` program `name`, verified (if it is not loaded yet).
    pub(crate) fn sk_reuseport(&mut self, name: &str) -> Result<&SkReuseport> {
        Ok(self.loaded_program::<SkReuseport>(name, "an sk_reuseport", SkReuseport::load)?)
    }

    /// Program `name` as a `T` (`kind` names the type in errors), loaded with `load` unless it
    /// is already.
    fn loaded_program<T>(
        &mut self,
        name: &str,
        kind: &str,
        load: impl FnOnce(&mut T) -> Result<(), ProgramError>,
    ) -> Result<&mut T>
    where
        for<'p> &'p mut T: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
        T: AsFdProgram,
    {
        let program: &mut T = self.ebpf.program_mut(name).ok_or_else(|| missing("program", name))?.try_into().map_err(
            |e: ProgramError| LabError::Bpf { what: format!("{name} as {kind} program"), message: e.to_string() },
        )?;
        if !program.is_loaded() {
            load(program).map_err(|e| LabError::Bpf { what: format!("verify {name}"), message: verifier_log(&e) })?;
        }
        Ok(program)
    }

    /// The kernel's id of program `name` (loaded): what link and program listings show.
    pub fn program_id(&self, name: &str) -> Result<u32> {
        let program = self.ebpf.program(name).ok_or_else(|| missing("program", name))?;
        program.info().map(|info| info.id()).map_err(|e| LabError::Bpf {
            what: format!("the kernel's information on {name}"),
            message: error_chain(&e),
        })
    }

    /// The map `name`.
    pub(crate) fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| missing("map", name))
    }

    /// The map `name`, mutably.
    pub(crate) fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| missing("map", name))
    }
}

/// Whether a program of an object is loaded in the kernel yet.
trait AsFdProgram {
    fn is_loaded(&self) -> bool;
}

impl AsFdProgram for SockOps {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

impl AsFdProgram for SkReuseport {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

impl AsFdProgram for SchedClassifier {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

impl AsFdProgram for SkLookup {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

fn missing(what: &str, name: &str) -> LabError {
    LabError::Bpf { what: format!("find {what} {name}"), message: "missing from the object".into() }
}

/// A map-access error as a lab error naming the step, with the OS error behind it.
pub(crate) fn map_err(what: &'static str) -> impl Fn(aya::maps::MapError) -> LabError {
    move |e| LabError::Bpf { what: what.into(), message: error_chain(&e) }
}

/// An error and its causes, `: `-separated (aya's messages leave the OS error to the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// The error of a refused program, with the last lines of the verifier's log.
fn verifier_log(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let mut tail: Vec<&str> = log.lines().rev().take(30).collect();
            tail.reverse();
            format!("{io_error}; verifier log (last lines):\n{}", tail.join("\n"))
        }
        other => other.to_string(),
    }
}

/// Sums a per-CPU array of `u64` counters slot by slot.
pub(crate) fn sum_counters(map: &Map, slots: u32, what: &'static str) -> Result<Vec<u64>> {
    let array: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map).map_err(map_err(what))?;
    (0..slots).map(|slot| Ok(array.get(&slot, 0).map_err(map_err(what))?.iter().sum())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each object is named after its `[[bin]]` in `ebpf/programs/Cargo.toml`: the name every
    /// load, pin and link error gives.
    #[test]
    fn each_object_is_named_after_its_binary() {
        let manifest: toml::Table =
            include_str!("../../../ebpf/programs/Cargo.toml").parse().expect("the programs' manifest");
        let bins: Vec<&str> = manifest["bin"]
            .as_array()
            .expect("[[bin]] entries")
            .iter()
            .map(|bin| bin["name"].as_str().expect("a name"))
            .collect();
        let objects = [
            Object::XdpPass,
            Object::XdpLb,
            Object::XdpLbNext,
            Object::XdpDecap,
            Object::XdpEmpty,
            Object::Tpr,
            Object::TprFill,
            Object::ReuseportSelect,
            Object::XdpDropAck,
            Object::SkLookupSteer,
            Object::TcImpair,
        ];
        assert_eq!(objects.len(), bins.len(), "one object per binary: {bins:?}");
        for object in objects {
            assert!(bins.contains(&object.name()), "{object:?} is named {:?}, not a binary of {bins:?}", object.name());
        }
    }
}
