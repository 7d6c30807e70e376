//! The lifecycle a service publishes, one line per change on its standard output.
//!
//! `Bound` is not `Ready`: a new release takes traffic only once it says it is ready (warm,
//! health-checked), never merely because it has bound its sockets (DESIGN.md section 1).

use std::fmt;

/// A service's lifecycle phase, in the order it passes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Phase {
    /// Sockets are bound (and listening); not yet taking traffic by choice.
    Bound,
    /// Ready to take new flows.
    Ready,
    /// Told to stop: takes no new flows, finishes the ones it has.
    Draining,
    /// All its flows ended; about to exit.
    Exited,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Bound, Self::Ready, Self::Draining, Self::Exited];

    fn word(self) -> &'static str {
        match self {
            Self::Bound => "bound",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Exited => "exited",
        }
    }

    /// The line announcing this phase (with its newline).
    pub fn emit(self) -> String {
        format!("phase {}\n", self.word())
    }

    /// Parses an announcement line; other lines give `None`.
    pub fn parse(line: &str) -> Option<Self> {
        let word = line.trim_end().strip_prefix("phase ")?;
        Self::ALL.into_iter().find(|p| p.word() == word)
    }
}

/// The file descriptors of a service's sockets, announced (`sockets tcp=3 udp=4,5`) before
/// [`Phase::Bound`], so that a release's dispatcher can take them (`pidfd_getfd`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sockets {
    /// TCP listeners.
    pub tcp: Vec<i32>,
    /// UDP sockets.
    pub udp: Vec<i32>,
}

impl Sockets {
    /// The announcement line (with its newline).
    pub(crate) fn emit(&self) -> String {
        let list = |fds: &[i32]| fds.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        format!("sockets tcp={} udp={}\n", list(&self.tcp), list(&self.udp))
    }

    /// Parses an announcement line; other lines give `None`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix("sockets ")?;
        let mut out = Self::default();
        for field in rest.split(' ') {
            let (key, list) = field.split_once('=')?;
            let fds: Vec<i32> =
                list.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>().ok()?;
            match key {
                "tcp" => out.tcp = fds,
                "udp" => out.udp = fds,
                _ => return None,
            }
        }
        Some(out)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase reads in the report (its phase times) as the word it is announced by.
    #[test]
    fn announcements_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(&phase.emit()), Some(phase));
            assert_eq!(format!("phase {phase}\n"), phase.emit());
        }
        assert_eq!(Phase::parse("phase warm"), None);
        assert_eq!(Phase::parse("log: bound"), None);
    }

    #[test]
    fn socket_announcements_round_trip() {
        let sockets = Sockets { tcp: vec![3], udp: vec![4, 5] };
        assert_eq!(sockets.emit(), "sockets tcp=3 udp=4,5\n");
        assert_eq!(Sockets::parse(&sockets.emit()), Some(sockets));
        assert_eq!(Sockets::parse("sockets tcp= udp=7"), Some(Sockets { tcp: vec![], udp: vec![7] }));
        assert_eq!(Sockets::parse("sockets tcp=x"), None);
        assert_eq!(Sockets::parse("phase bound"), None);
    }
}
