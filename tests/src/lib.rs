//! End-to-end test crate; the tests live in `it/`. The unit tests here check the deploy files, which
//! need no cluster.

#[cfg(test)]
mod deploy;
