//! The benchmark commands: `tierd bench` ([`socket`]: round trips over the
//! socket against a minimal echo server) and `tierd bench-real` ([`real`]:
//! promotion to RAM against `cat` and `vmtouch -t`, a verified directory
//! move against `cp`).

pub mod real;
pub mod socket;
