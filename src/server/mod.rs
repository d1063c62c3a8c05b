//! The server side: the request list and parsing ([`protocol`]), carrying a
//! request out on the engine ([`dispatch`]), line framing ([`framing`]), the
//! shared engine and its clock ([`shared`]), one connection's loop
//! ([`connection`]), the server's lifecycle ([`serve`]), the CLI client
//! ([`client`]) and the load benchmark ([`bench`](mod@bench)).

pub mod bench;
pub mod client;
pub mod connection;
pub mod dispatch;
pub mod framing;
pub mod protocol;
pub mod serve;
pub mod shared;
