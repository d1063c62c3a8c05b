//! The server side: line framing ([`framing`]), the shared engine and its
//! clock ([`shared`]), who may connect and how many ([`gate`]), one
//! connection's loop ([`connection`]), the Prometheus scrape endpoint
//! ([`metrics_http`]), the server's lifecycle and how it builds its machine
//! ([`serve`]), systemd socket activation and readiness ([`systemd`]), the
//! model sources' scans and rescans ([`sources`]), and the CLI client
//! ([`client`]; the one-model commands `register`, `info`, `path`, ... in
//! [`model_cli`]), which follows event streams with [`follow`]; watchers are
//! fanned out to by [`events`]. What each request does is in `requests`.

pub mod client;
pub mod connection;
pub mod events;
pub mod follow;
pub mod framing;
pub mod gate;
pub mod metrics_http;
pub mod model_cli;
pub mod open;
pub mod serve;
pub mod shared;
pub mod sources;
pub mod systemd;
