//! The test wing: everything that exists to prove the product, compiled only for unit
//! tests or behind the `fuzzing` feature (which `fuzz/` and the test suite enable). A
//! release build of the library contains none of it.
//!
//! | module | what |
//! |---|---|
//! | [`sim`] | the simulated disk: power loss, torn writes, bit rot, failing fsync, ENOSPC, transient read errors; the one storage double |
//! | [`fuzzing`] | the fuzz targets' entry points (segment, register, whole directory), also replayed on stable by the corpus test |
//! | `drains` | the drains the unit tests deliver to |
//! | `model` | the model-based test: random actions against the real sink on the simulated disk |
//! | `faults` | sticky fsync failure and a full disk, through the storage trait |
//! | `holes` | one regression test per durability hole found in review |

#[cfg(test)]
pub(crate) mod drains;
#[cfg(test)]
mod faults;
pub mod fuzzing;
#[cfg(test)]
mod holes;
#[cfg(test)]
mod model;
pub(crate) mod sim;
