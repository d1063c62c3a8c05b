//! The benchmark commands: `tierd bench` ([`socket`]: round trips over the
//! socket against a minimal echo server) and `tierd bench-real` ([`real`]:
//! promotion to RAM against `cat` and `vmtouch -t`, a verified directory
//! move against `cp`) and `tierd bench-engine` ([`engine`]: llama-server
//! loads through tierd against direct ones, pinned against cold).

pub mod engine;
pub mod real;
pub mod socket;
