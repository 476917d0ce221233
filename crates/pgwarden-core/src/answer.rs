//! The three outcomes of a check: yes, no, or unknown (and why).
//!
//! A check that could not be made (a command that did not run or timed out,
//! a permission error, an exit status or an answer that means neither) is
//! never read as "no": pgwarden's safety rests on "stopped" meaning stopped.
//! Callers match all three arms; `Unknown` stops the step with its reason.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    /// The check could not tell; the sentence says why and what to fix.
    Unknown(String),
}

impl Answer {
    /// `Yes` for true, `No` for false.
    pub fn from_bool(b: bool) -> Answer {
        if b {
            Answer::Yes
        } else {
            Answer::No
        }
    }

    pub fn is_yes(&self) -> bool {
        *self == Answer::Yes
    }

    pub fn is_no(&self) -> bool {
        *self == Answer::No
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Yes => f.write_str("yes"),
            Answer::No => f.write_str("no"),
            Answer::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}
