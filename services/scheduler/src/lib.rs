//! The scheduler: the engine. Work in progress.
#![warn(missing_docs)]
