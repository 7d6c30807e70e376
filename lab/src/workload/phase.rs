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

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(&phase.emit()), Some(phase));
        }
        assert_eq!(Phase::parse("phase warm"), None);
        assert_eq!(Phase::parse("log: bound"), None);
    }
}
