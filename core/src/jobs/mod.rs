//! Background work as units: what is due, claims and leases, backoff, the scheduler's dispatch, and the
//! worker processes' heartbeats.

pub mod backoff;
pub mod due;
pub mod job;
pub mod leases;
pub mod marks;
pub mod scheduler;
pub mod workers;
