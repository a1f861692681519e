//! The points of a flow at which a fault test may have the scheduler kill itself (`--failpoint`):
//! an enum, so a misspelt point is refused at start instead of never firing.

/// A point of a flow where the scheduler may be killed (SIGKILL) by a fault test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Failpoint {
    /// Before the SPM creates the destination's structure.
    BeforeStructure,
    /// Right after the structure is created.
    AfterStructure,
    /// After a copy's attempt is persisted in the flow, before CopyData is sent.
    AfterCopyPersisted,
    /// After CopyData is sent, before its answer is recorded.
    AfterCopySent,
    /// Before a move's source is deleted.
    BeforeDeleteSource,
    /// After the source is deleted, before the flow records it.
    AfterDeleteSource,
    /// Before a rollback deletes what the operation created.
    BeforeRollbackDelete,
    /// Before the operation is recorded done.
    BeforeFinish,
}

impl Failpoint {
    /// The name `--failpoint` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeStructure => "before-structure",
            Self::AfterStructure => "after-structure",
            Self::AfterCopyPersisted => "after-copy-persisted",
            Self::AfterCopySent => "after-copy-sent",
            Self::BeforeDeleteSource => "before-delete-source",
            Self::AfterDeleteSource => "after-delete-source",
            Self::BeforeRollbackDelete => "before-rollback-delete",
            Self::BeforeFinish => "before-finish",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn every_point_is_named_as_the_flag_takes_it() {
        for p in Failpoint::value_variants() {
            assert_eq!(Failpoint::from_str(p.name(), false), Ok(*p));
        }
        assert!(Failpoint::from_str("before-strucutre", false).is_err());
    }
}
