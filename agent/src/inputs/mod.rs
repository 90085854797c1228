//! Inputs: every source of samples on the agent feeds the batcher's bounded channel
//! and waits when it is full (the spool's backpressure). Each input registers its
//! sensors in the catalog before producing, and counts what it produced.

pub mod synthetic;
