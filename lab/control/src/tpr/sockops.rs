//! One side of the `tpr` programs attached to one cgroup.
//!
//! Every node gets its own loaded object (its own counters and id), as separate machines
//! would. Sockets are subject to the programs of the cgroup they were created in, so the
//! program must be attached before the service listens (`TCP_LISTEN_CB` is what turns on
//! option writing for a listener) or the client connects.

use std::path::Path;

use aya::maps::Array;
use serde::Serialize;
use zrlab_common::tpr::{COUNTERS_MAP, SERVER_ID_MAP, counter};

use crate::bpf::{Loaded, Object, map_err, sum_counters};
use zrlab_host::error::Result;

/// Which program: the backend's or the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `tpr_server`: writes the server id on SYN-ACKs, checks the echo.
    Server,
    /// `tpr_client`: reads the id from the SYN-ACK, echoes it on every later segment.
    Client,
}

impl Side {
    fn program(self) -> &'static str {
        match self {
            Self::Server => "tpr_server",
            Self::Client => "tpr_client",
        }
    }
}

/// What a `tpr` program counted (`zrlab_common::tpr::counter`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TprCounters {
    /// Server: options written on SYN-ACKs.
    pub written: u64,
    /// Server: of those, on SYN-cookie SYN-ACKs.
    pub written_cookie: u64,
    /// Server: first echoes that carried its id.
    pub echo_ok: u64,
    /// Server: first echoes that carried another id.
    pub wrong_id: u64,
    /// Client: ids parsed from SYN-ACKs.
    pub parsed: u64,
    /// Client: segments that carried the echo.
    pub echoed: u64,
    /// Either: segments that went without the option because the option space was full.
    pub no_space: u64,
    /// Nothing to carry: server id 0, or a SYN-ACK without an id.
    pub skipped: u64,
    /// Failed writes.
    pub write_errors: u64,
}

impl TprCounters {
    fn from_slots(slots: &[u64]) -> Self {
        let at = |slot: u32| slots.get(slot as usize).copied().unwrap_or(0);
        Self {
            written: at(counter::WRITTEN),
            written_cookie: at(counter::WRITTEN_COOKIE),
            echo_ok: at(counter::ECHO_OK),
            wrong_id: at(counter::WRONG_ID),
            parsed: at(counter::PARSED),
            echoed: at(counter::ECHOED),
            no_space: at(counter::NO_SPACE),
            skipped: at(counter::SKIPPED),
            write_errors: at(counter::WRITE_ERRORS),
        }
    }
}

impl std::ops::AddAssign for TprCounters {
    fn add_assign(&mut self, o: Self) {
        self.written += o.written;
        self.written_cookie += o.written_cookie;
        self.echo_ok += o.echo_ok;
        self.wrong_id += o.wrong_id;
        self.parsed += o.parsed;
        self.echoed += o.echoed;
        self.no_space += o.no_space;
        self.skipped += o.skipped;
        self.write_errors += o.write_errors;
    }
}

/// One side of `tpr`, attached to one cgroup. Detached when dropped.
#[derive(Debug)]
pub struct SockOpsTpr {
    bpf: Loaded,
    side: Side,
}

impl SockOpsTpr {
    /// Loads the object, sets the server id (servers; 0 writes nothing) and attaches `side`'s
    /// program to `cgroup`.
    pub fn attach(side: Side, cgroup: &Path, server_id: u32) -> Result<Self> {
        let mut this = Self { bpf: Loaded::load(Object::Tpr, &[])?, side };
        if side == Side::Server {
            this.set_server_id(server_id)?;
        }
        this.bpf.attach_sock_ops(side.program(), cgroup)?;
        Ok(this)
    }

    /// Changes the id a server writes on its next SYN-ACKs.
    pub(crate) fn set_server_id(&mut self, id: u32) -> Result<()> {
        let mut map: Array<_, u32> =
            Array::try_from(self.bpf.map_mut(SERVER_ID_MAP)?).map_err(map_err("TPR_SERVER_ID"))?;
        map.set(0, id, 0).map_err(map_err("write TPR_SERVER_ID"))
    }

    /// Replaces the program under its live sockets with a reload of it (`Loaded::reload`):
    /// the server id and the counters handed over, the cgroup link swapped with one update, so
    /// every SYN-ACK in between carries the option.
    pub fn upgrade(&mut self) -> Result<()> {
        self.bpf = self.bpf.reload()?;
        Ok(())
    }

    /// The kernel's id of the program now loaded.
    pub fn program_id(&self) -> Result<u32> {
        self.bpf.program_id(self.side.program())
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Its counters.
    pub fn counters(&self) -> Result<TprCounters> {
        Ok(TprCounters::from_slots(&sum_counters(self.bpf.map(COUNTERS_MAP)?, counter::SLOTS, "TPR_COUNTERS")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field adds up, each from its own field and its own slot (distinct values per slot:
    /// a field read from or added to another's would show).
    #[test]
    fn counters_come_from_their_slots_and_add_field_by_field() {
        let slots: Vec<u64> = (0..u64::from(counter::SLOTS)).map(|slot| 1 << slot).collect();
        let one = TprCounters::from_slots(&slots);
        let want = TprCounters {
            written: 1 << counter::WRITTEN,
            written_cookie: 1 << counter::WRITTEN_COOKIE,
            echo_ok: 1 << counter::ECHO_OK,
            wrong_id: 1 << counter::WRONG_ID,
            parsed: 1 << counter::PARSED,
            echoed: 1 << counter::ECHOED,
            no_space: 1 << counter::NO_SPACE,
            skipped: 1 << counter::SKIPPED,
            write_errors: 1 << counter::WRITE_ERRORS,
        };
        assert_eq!(one, want);
        let mut total = one;
        total += one;
        total += one;
        let three = TprCounters::from_slots(&slots.iter().map(|v| 3 * v).collect::<Vec<_>>());
        assert_eq!(total, three);
    }
}
